"""The simulated workload: operations clients enqueue, and the tasks that run them.

Rules of this module:
- An operation (`Op`) is one logical job a client wants: its arguments carry the op id,
  so every stored job and every execution can be traced back to the op that asked for it.
- Operations are drawn from a generator seeded by the run seed, before the run starts.
- Tasks are async only (sync tasks use threads, which break determinism). Each node gets
  its own `App` whose tasks record every execution: the job's id and attempt, the node
  and its incarnation, and the arguments received, packed again (msgpack packing is
  canonical for these values, so equal bytes mean the arguments arrived intact).
- "poison" kills the node running it, every time: the harness crashes that node.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from gotask._app import App, current_job, pack_args, unpack_args
from gotask._retry import RetryPolicy

from .history import ExecEnded, ExecStarted, History

__all__ = ["CronSpec", "Op", "TaskEnv", "WorkloadSpec", "cron_args", "duration_of", "make_app",
           "make_ops"]

RETRY = RetryPolicy(kind="exponential", base_s=0.5, cap_s=4.0, jitter=0.5)
#: Results outlive the clock jumps of the cron scenario, so storage's final snapshot
#: holds every job the checker looks for.
RESULT_TTL_S = 30 * 86_400.0
#: Characters arguments are drawn from: ASCII, accents, CJK, an emoji, a NUL.
_CHARS = "abcxyz0129 _-éüßñ漢字かな\u2603\U0001f600\x00"


class FlakyError(Exception):
    """Raised by a "work" task on its planned failing attempts."""


@attrs.frozen
class WorkloadSpec:
    """What the clients ask for: `ops` jobs asked for between trio times `start_s` and
    `end_s`, and how they behave (durations in seconds, fractions of all ops)."""

    ops: int = 24
    start_s: float = 0.5
    end_s: float = 20.0
    duration_s: tuple[float, float] = (0.05, 2.0)
    long_fraction: float = 0.15
    long_duration_s: tuple[float, float] = (6.0, 12.0)
    delayed_fraction: float = 0.2
    delay_s: tuple[float, float] = (0.5, 8.0)
    flaky_fraction: float = 0.2
    keyless_fraction: float = 0.2
    invalid_fraction: float = 0.05
    cancel_fraction: float = 0.08
    poison: int = 0
    max_attempts: tuple[int, int] = (3, 5)


@attrs.frozen
class CronSpec:
    """A cron entry every worker's app declares: it enqueues a short "work" job."""

    name: str
    schedule: str
    misfire: str = "once"
    misfire_limit: int = 100
    zone: str = "UTC"


def cron_args(name: str) -> list[Any]:
    """The "work" arguments of entry `name`'s jobs: a 0.2 s run that never fails; the
    op id `cron-NAME` is no client's."""
    return [f"cron-{name}", b"", {}, 0.2, 0]


@attrs.frozen
class Op:
    """One job a client wants enqueued; `at` is the trio time it asks."""

    op_id: str
    client: str
    at: float
    task: str
    args: bytes
    key: str | None
    delay_s: float
    max_attempts: int
    cancel_after_s: float | None


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))


def _meta(rng: random.Random) -> dict[str, Any]:
    return {
        "text": _text(rng),
        "n": rng.randint(-(2**63), 2**64 - 1),
        "f": rng.uniform(-1e9, 1e9),
        "list": [None, True, False, rng.random(), _text(rng)],
        "nested": {"b": rng.randbytes(rng.randint(0, 8)), "": {}},
    }


def _duration(rng: random.Random, spec: WorkloadSpec) -> float:
    if rng.random() < spec.long_fraction:
        return round(rng.uniform(*spec.long_duration_s), 3)
    return round(rng.uniform(*spec.duration_s), 3)


def _op(rng: random.Random, spec: WorkloadSpec, index: int, client: str, task: str) -> Op:
    op_id = f"{client}-{index:03d}"
    if task == "work":
        fail_times = rng.randint(1, 2) if rng.random() < spec.flaky_fraction else 0
        args = pack_args([op_id, rng.randbytes(rng.randint(0, 64)), _meta(rng),
                          _duration(rng, spec), fail_times])
    else:
        args = pack_args([op_id, rng.randbytes(8)])
    keyed = task == "poison" or rng.random() >= spec.keyless_fraction
    cancel = rng.random() < spec.cancel_fraction and task == "work"
    return Op(
        op_id=op_id, client=client, at=round(rng.uniform(spec.start_s, spec.end_s), 3),
        task=task, args=args, key=f"key-{op_id}" if keyed else None,
        delay_s=round(rng.uniform(*spec.delay_s), 3) if rng.random() < spec.delayed_fraction
        else 0.0,
        max_attempts=rng.randint(*spec.max_attempts),
        cancel_after_s=round(rng.uniform(0.0, 6.0), 3) if cancel else None,
    )


def make_ops(rng: random.Random, spec: WorkloadSpec, clients: list[str]) -> list[Op]:
    """Draw every operation of a run, spread over the clients."""
    ops: list[Op] = []
    for index in range(spec.ops + spec.poison):
        client = clients[index % len(clients)]
        if index >= spec.ops:
            task = "poison"
        elif rng.random() < spec.invalid_fraction:
            task = "no_such_task"
        else:
            task = "work"
        ops.append(_op(rng, spec, index, client, task))
    return ops


def duration_of(args: bytes) -> float:
    """How long a "work" job runs, from its arguments (0 for other tasks)."""
    positional, _ = unpack_args(args)
    return float(positional[3]) if len(positional) == 5 else 0.0


@attrs.frozen
class TaskEnv:
    """What a node's tasks know: where they run, where to record, how to kill the node."""

    node: str
    life: int
    history: History
    crash_node: Callable[[str], None]


def make_app(env: TaskEnv, cron: tuple[CronSpec, ...] = ()) -> App:
    """The tasks of one node incarnation: "work" and "poison", and the cron entries."""
    app = App(f"sim-{env.node}-{env.life}")

    @app.task(name="work", retry=RETRY, result_ttl_s=RESULT_TTL_S)
    async def work(op: str, blob: bytes, meta: dict[str, Any], duration_s: float,
                   fail_times: int) -> dict[str, Any]:
        attempt = _started(env, pack_args([op, blob, meta, duration_s, fail_times]))
        outcome = "stopped"
        try:
            await trio.sleep(duration_s)
            if attempt <= fail_times:
                outcome = "raised"
                raise FlakyError(f"{op}: planned failure on attempt {attempt}")
            outcome = "ok"
            return {"op": op, "attempt": attempt, "node": env.node}
        finally:
            _ended(env, outcome)

    @app.task(name="poison", retry=RETRY, result_ttl_s=RESULT_TTL_S)
    async def poison(op: str, blob: bytes) -> None:
        _started(env, pack_args([op, blob]))
        try:
            env.crash_node(env.node)
            await trio.sleep_forever()
        finally:
            _ended(env, "stopped")

    for entry in cron:
        app.add_cron(entry.name, "work", entry.schedule, args=cron_args(entry.name),
                     misfire=entry.misfire, misfire_limit=entry.misfire_limit,
                     zone=entry.zone)
    return app


def _started(env: TaskEnv, args: bytes) -> int:
    job = current_job()
    env.history.add(ExecStarted(trio.current_time(), env.node, job.job_id, job.attempt,
                                env.life, args))
    return job.attempt


def _ended(env: TaskEnv, outcome: str) -> None:
    job = current_job()
    env.history.add(ExecEnded(trio.current_time(), env.node, job.job_id, job.attempt,
                              env.life, outcome))
