"""Simulated clients: nodes that host no actors and call a Broker over the sim network.

Rules of this module:
- A client enqueues each of its operations at the op's time, through a Broker it picks
  at random among the live worker nodes, and records every try and its outcome.
- Outcomes: "ok" (acknowledged, with the job id), "failed" (refused for a reason that
  guarantees nothing was stored: an unknown task, bad arguments), "indeterminate" (a
  timeout, a lost connection, a storage error relayed by the Broker: the job may exist).
- An indeterminate op is retried with backoff, with the same idempotency key, up to
  `TRIES` times; an op without a key is never retried (a retry could enqueue it twice).
- Op state lives in `OpState`, outside the client node: like a client's own durable
  outbox, it survives a crash of the client, whose next incarnation carries on.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import trio

from gotask._errors import ActorError, RemoteActorError
from gotask._protocol import JobSpec
from gotask.actors import broker
from gotask.runtime import Node

from .history import CancelDone, EnqueueDone, EnqueueSent, History
from .workload import Op

__all__ = ["ClientEnv", "OpState", "run_client_ops"]

TRIES = 6
CALL_TIMEOUT_S = 6.0
BACKOFF_S = (0.5, 2.0)
#: Errors a Broker relays that prove the job was not stored.
DEFINITE = frozenset({"TaskNotFound", "InvalidArguments", "ValueError", "TypeError"})


@attrs.define(eq=False)
class OpState:
    """What a client knows about one op; survives the client's crashes."""

    op: Op
    outcome: str = "pending"
    job_id: str | None = None
    tries: int = 0
    cancelled: bool = False

    @property
    def open(self) -> bool:
        """True while the op may still be (re)tried."""
        if self.tries >= TRIES or self.outcome in ("ok", "failed"):
            return False
        return self.outcome == "pending" or self.op.key is not None


@attrs.frozen
class ClientEnv:
    """What a client incarnation uses: its node, randomness, the live Brokers."""

    node: Node
    rng: random.Random
    history: History
    brokers: Callable[[], list[str]]


async def run_client_ops(env: ClientEnv, states: list[OpState]) -> None:
    """Run every op still open, each at its time, concurrently."""
    async with trio.open_nursery() as nursery:
        for state in sorted(states, key=lambda s: (s.op.at, s.op.op_id)):
            if state.open or _wants_cancel(state):
                await trio.sleep_until(max(state.op.at, trio.current_time()))
                nursery.start_soon(_run_op, env, state)


def _wants_cancel(state: OpState) -> bool:
    return state.outcome == "ok" and state.op.cancel_after_s is not None and not state.cancelled


async def _run_op(env: ClientEnv, state: OpState) -> None:
    while state.open:
        at = _pick(env)
        if at is None:  # every worker is down: wait, this is no try
            await trio.sleep(1.0)
            continue
        await _enqueue_once(env, state, at)
        if state.open:
            await trio.sleep(env.rng.uniform(*BACKOFF_S))
    if _wants_cancel(state):
        assert state.op.cancel_after_s is not None and state.job_id is not None
        await trio.sleep(state.op.cancel_after_s)
        await _cancel(env, state, state.job_id)


def _pick(env: ClientEnv) -> str | None:
    brokers = env.brokers()
    return env.rng.choice(brokers) if brokers else None


async def _enqueue_once(env: ClientEnv, state: OpState, at: str) -> None:
    op, node = state.op, env.node
    state.tries += 1
    env.history.add(EnqueueSent(trio.current_time(), node.name, op.op_id, at, state.tries))
    spec = JobSpec(op.task, op.args, delay_s=op.delay_s, max_attempts=op.max_attempts,
                   idempotency_key=op.key)
    outcome, job_id, created, error = "indeterminate", None, None, ""
    if state.outcome == "pending":
        state.outcome = "indeterminate"  # until answered: a crash here leaves it so
    try:
        reply = await broker.enqueue(node, at, (spec,), timeout_s=CALL_TIMEOUT_S)
        outcome, job_id, created = "ok", reply.ids[0], reply.created[0]
    except RemoteActorError as exc:
        outcome = "failed" if exc.type_name in DEFINITE else "indeterminate"
        error = exc.type_name
    except ActorError as exc:
        error = type(exc).__name__
    if state.outcome != "ok":
        state.outcome, state.job_id = outcome, job_id
    env.history.add(EnqueueDone(trio.current_time(), node.name, op.op_id, outcome, job_id,
                                created, error))


async def _cancel(env: ClientEnv, state: OpState, job_id: str) -> None:
    for _ in range(3):
        at = _pick(env)
        if at is None:
            await trio.sleep(1.0)
            continue
        try:
            states = await broker.cancel_jobs(env.node, at, (job_id,), timeout_s=CALL_TIMEOUT_S)
        except ActorError as exc:
            result = f"error:{type(exc).__name__}"
        else:
            result = states[0]
        env.history.add(CancelDone(trio.current_time(), env.node.name, state.op.op_id,
                                   job_id, result))
        if not result.startswith("error"):
            state.cancelled = True
            return
        await trio.sleep(env.rng.uniform(*BACKOFF_S))
