"""One simulated run: a whole cluster in one deterministic trio run, driven by a scenario.

Rules of this module:
- `simulate(scenario, seed)` is a pure function of its arguments: trio's scheduler is
  seeded (`run_deterministic`, MockClock with autojump), every World and generator is
  derived from the seed, the network is the seeded `SimNetwork`, storage is the memory
  core. Production code runs unchanged; only clock, randomness and transport are seams.
- Phases: start the store, the workers and the clients; run the scenario's faults while
  the clients enqueue; heal everything (network, crashed and stalled nodes); wait for
  the clients to finish ("quiet"); wait until every stored job is terminal or the
  liveness bound passes; settle a little longer so late messages arrive; stop.
- The liveness bound is computed from the spec (see `liveness_budget_s`), not tuned.
- Production log records of level ERROR and above become history events during the run.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio

from gotask._job import JobRecord
from gotask._messages import STORAGE
from gotask.actors.storage.actor import run_storage
from gotask.actors.storage.base import (
    CountJobs,
    CountJobsReply,
    CronList,
    CronListReply,
    CronState,
    ListJobs,
    ListJobsReply,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import Node, open_node, sim_world
from gotask.testing.sim import run_deterministic
from gotask.transports.sim import SimConfig, SimNetwork

from .clients import CALL_TIMEOUT_S, TRIES, OpState
from .cluster import STORE, ClockJumps, Sim, SimSpec, Window, derive
from .history import History
from .recorder import NetListener, RecordingCore, RecordingLog, record_net
from .workload import make_ops

__all__ = ["PLANTED", "RunResult", "Scenario", "liveness_budget_s", "simulate"]

T = TypeVar("T")
REAPER_INTERVAL_S = 1.0
LEASE_CALL_S = 15.0  # the Dispatcher's LeaseWait: wait_s + 10
ACK_CALL_S = 30.0  # the WorkerSupervisor's storage call timeout
POLL_S = 0.5
_LIVE = frozenset({"scheduled", "queued", "active"})
#: TEST-ONLY storage bugs the checker must catch: a stale completion accepted (fencing
#: checks the state, not the attempt); a cron fire applied without its compare-and-set.
PLANTED = ("stale-ack", "cron-no-cas")


@attrs.frozen
class Scenario:
    """A named fault plan: the cluster's shape and an async function that hurts it."""

    name: str
    doc: str
    spec: SimSpec
    faults: Callable[[Sim], Awaitable[None]]


@attrs.frozen
class RunResult:
    """Everything the checker needs about one finished run."""

    scenario: str
    seed: int
    spec: SimSpec
    history: History
    ops: tuple[OpState, ...]
    final: dict[str, JobRecord]
    windows: tuple[Window, ...]
    failures: tuple[str, ...]
    quiet_at: float
    drained_at: float | None
    bound_at: float
    peak_in_flight: int
    cron_final: tuple[CronState, ...] = ()
    store_now: float = 0.0
    jumps: tuple[tuple[float, float], ...] = ()


def liveness_budget_s(spec: SimSpec) -> float:
    """Seconds after the faults heal and the clients finish within which every job must
    be terminal: every attempt may need a full run, a lease expiry noticed by the Reaper,
    the longest retry backoff, a lost ack or lease reply timing out, and a restart;
    plus the backlog of jobs the cluster's slots take in turn."""
    work = spec.workload
    longest = max(work.long_duration_s[1], work.duration_s[1])
    per_attempt = (longest + spec.lease_timeout_s + spec.heartbeat_s + REAPER_INTERVAL_S
                   + 4.0 + ACK_CALL_S + LEASE_CALL_S + spec.restart_after_s[1])
    slots = max(1, spec.workers * spec.concurrency)
    backlog = math.ceil((work.ops + work.poison) / slots) * longest
    return work.max_attempts[1] * per_attempt + backlog + max(work.delay_s)


def simulate(scenario: Scenario, seed: int, *, planted: str | None = None) -> RunResult:
    """Run `scenario` with `seed`; the same arguments give the same result.

    Args:
        planted: TEST-ONLY: one of `PLANTED`, a storage bug the checker must catch (its
            self-test), or None.

    Raises:
        ValueError: `planted` is not one of `PLANTED`.
    """
    if planted is not None and planted not in PLANTED:
        raise ValueError(f"unknown planted bug {planted!r}; one of {', '.join(PLANTED)}")
    with _recording_logs() as history:
        main = functools.partial(_main, scenario, seed, history, planted)
        return run_deterministic(main, seed)


@contextmanager
def _recording_logs() -> Iterator[History]:
    history = History()
    logger = logging.getLogger("gotask")
    handler = RecordingLog(history)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield history
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _main(scenario: Scenario, seed: int, history: History,
                planted: str | None) -> RunResult:
    spec = scenario.spec
    memory = MemoryStorageCore(accept_stale_acks=planted == "stale-ack",
                               fire_without_cas=planted == "cron-no-cas")
    core = RecordingCore(memory, history)
    skew = random.Random(derive(seed, "store-skew")).uniform(-spec.skew_s, spec.skew_s)
    clocks = ClockJumps()
    async with open_node(STORE, clocks.world(derive(seed, STORE), skew)) as store:
        await store.start_actor(STORAGE, functools.partial(run_storage, core=core),
                                inbox_max=spec.storage_inbox_max)
        config = SimConfig(latency_s=spec.latency_s, outbound_max=spec.outbound_max)
        net = SimNetwork(sim_world(derive(seed, "net")), config)
        async with trio.open_nursery() as nursery:
            sim = _make_sim(scenario, seed, history, net, core, store, nursery)
            sim.clocks = clocks
            hooks = [sim.drop_stalled_heartbeats, sim.track_in_flight, *_relay(sim)]
            net.on_event = record_net(history, hooks)
            result = await _run_phases(scenario, sim)
            nursery.cancel_scope.cancel()
    return result


def _make_sim(scenario: Scenario, seed: int, history: History, net: SimNetwork,
              core: RecordingCore, store: Node, nursery: trio.Nursery) -> Sim:
    spec = scenario.spec
    clients = [f"client{i + 1}" for i in range(spec.clients)]
    ops = make_ops(random.Random(derive(seed, "ops")), spec.workload, clients)
    by_client = {name: [OpState(op) for op in ops if op.client == name] for name in clients}
    sim = Sim(seed, spec, history, net, core, store, nursery,
              random.Random(derive(seed, "scenario")), by_client)
    for i in range(spec.workers):
        sim.add_member(f"worker{i + 1}", "worker")
    for name in clients:
        sim.add_member(name, "client")
    return sim


def _relay(sim: Sim) -> list[NetListener]:
    """A listener passing events on to the scenario's listeners (cleared at healing)."""

    def relay(kind: str, info: dict[str, Any]) -> None:
        for listener in tuple(sim.net_listeners):
            listener(kind, info)

    return [relay]


async def _run_phases(scenario: Scenario, sim: Sim) -> RunResult:
    for name in sorted(sim.workers):
        await sim.restart(name)
    for name in sorted(sim.clients):
        await sim.restart(name)
    await scenario.faults(sim)
    await _heal_all(sim)
    quiet_at = await _wait_quiet(sim)
    bound_at = quiet_at + liveness_budget_s(sim.spec)
    drained_at = await _wait_drained(sim, bound_at)
    await trio.sleep(sim.spec.settle_s)
    return RunResult(
        scenario=scenario.name, seed=sim.seed, spec=sim.spec, history=sim.history,
        ops=tuple(s for states in sim.ops.values() for s in states),
        final=_final_jobs(sim), windows=tuple(sim.windows),
        failures=tuple(sim.failures), quiet_at=quiet_at, drained_at=drained_at,
        bound_at=bound_at, peak_in_flight=sim.peak_in_flight,
        cron_final=_store_query(sim, CronList(), CronListReply).states,
        store_now=sim.store.world.wall(), jumps=tuple(sim.clocks.log),
    )


async def _heal_all(sim: Sim) -> None:
    """End every fault: scenario hooks, the network, crashed and down nodes."""
    sim.core.hooks.clear()
    sim.net_listeners.clear()
    sim.history.listeners.clear()
    sim.heal()
    sim.set_net_faults(0.0, 0.0, 0.0)
    for name in sorted(sim.workers):
        await sim.restart(name)
    for name in sorted(sim.clients):
        await sim.restart(name)
    sim.record("healed")


async def _wait_quiet(sim: Sim) -> float:
    """Wait until every client has finished its ops (bounded by its tries)."""
    limit = trio.current_time() + TRIES * (CALL_TIMEOUT_S + 2.0) + 60.0
    while trio.current_time() < limit:
        if all(m.finished for m in sim.clients.values()):
            break
        await trio.sleep(POLL_S)
    return trio.current_time()


async def _wait_drained(sim: Sim, bound_at: float) -> float | None:
    while trio.current_time() <= bound_at:
        if _live_jobs(sim) == 0:
            return trio.current_time()
        await trio.sleep(POLL_S)
    return None


def _store_query(sim: Sim, cmd: Any, kind: type[T]) -> T:
    """Ask the memory core directly (not recorded), at storage time."""
    reply = sim.core.inner.handle(cmd, sim.store.world.wall())
    assert isinstance(reply, kind)
    return reply


def _live_jobs(sim: Sim) -> int:
    reply = _store_query(sim, CountJobs(), CountJobsReply)
    return sum(c.count for c in reply.counts if c.state in _LIVE)


def _final_jobs(sim: Sim) -> dict[str, JobRecord]:
    jobs: dict[str, JobRecord] = {}
    after: str | None = None
    while True:
        reply = sim.core.inner.handle(ListJobs(limit=1000, after_id=after),
                                      sim.store.world.wall())
        assert isinstance(reply, ListJobsReply)
        jobs.update((job.id, job) for job in reply.jobs)
        if reply.next_after is None:
            return jobs
        after = reply.next_after
