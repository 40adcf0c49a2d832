"""The Dispatcher: leases jobs for its node's free worker slots.

Rules of this module:
- `DispatcherCore` counts slots: `capacity` = concurrency plus a prefetch, so workers
  find the next job already leased when they finish one. It is pure and synchronous.
- The shell leases with `LeaseWait`: storage answers at once when jobs are due, or
  parks the request until some are (the wake-up). It never busy-polls.
- One lease carries many jobs and becomes one `RunJobs` message; freed slots come back
  as one `SlotsFreed` per batch of acknowledgements. The cost is per message, not per job.
- Storage unreachable: back off with jitter and try again; leased jobs are never lost,
  since a lease nobody acts on expires and the Reaper requeues it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from gotask._errors import ActorError
from gotask._job import JobRecord
from gotask._messages import LeaseWait, PauseWorkers, RunJobs, SlotsFreed, Unpark
from gotask.runtime import ActorContext, Address, Ok

from .storage.base import LeaseJobs, LeaseReply, QueueWeight

__all__ = ["DispatcherConfig", "DispatcherCore", "run_dispatcher"]

log = logging.getLogger("gotask.dispatcher")


@attrs.frozen
class DispatcherConfig:
    """Settings of one node's Dispatcher (durations in seconds)."""

    queues: tuple[QueueWeight, ...] = (QueueWeight("default", 1),)
    concurrency: int = 64
    prefetch: int = 64
    lease_timeout_s: float = 30.0
    wait_s: float = 5.0
    lease_max: int = 512
    #: Lease requests at storage at once: 1 suits local memory storage; a remote store
    #: gains from 2 (each with half the slots).
    leases_in_flight: int = 1
    retry_backoff_s: float = 0.5


@attrs.define
class DispatcherCore:
    """Free-slot accounting, pure."""

    capacity: int
    free: int = attrs.field()
    paused: bool = False

    @free.default
    def _all_free(self) -> int:
        return self.capacity

    def want(self, lease_max: int) -> int:
        """How many jobs to lease now (0 when paused or full)."""
        return 0 if self.paused else min(self.free, lease_max)

    def granted(self, count: int) -> None:
        """`count` jobs were leased and handed to workers."""
        if count > self.free:
            raise ValueError(f"granted {count} jobs with only {self.free} free slots")
        self.free -= count

    def freed(self, count: int) -> None:
        """`count` slots became free again."""
        self.free = min(self.capacity, self.free + count)


async def run_dispatcher(
    ctx: ActorContext,
    *,
    storage: Address,
    workers: Address,
    config: DispatcherConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Lease jobs for free slots and hand them to the WorkerSupervisor.

    `config.leases_in_flight` lease requests run at once, each for at most
    `lease_max` slots reserved up front, so storage is working on the next lease while
    the answer to the previous one travels and is handed on.
    """
    core = DispatcherCore(config.concurrency + config.prefetch)
    wake = _Wake()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_inbox_loop, ctx, core, storage, wake.set)
        for _ in range(config.leases_in_flight):
            nursery.start_soon(_lease_loop, ctx, core, wake, storage, workers, config)
        task_status.started()


@attrs.define
class _Wake:
    """An event that can be waited on again after it fired."""

    event: trio.Event = attrs.Factory(trio.Event)

    def set(self) -> None:
        self.event.set()
        self.event = trio.Event()


async def _lease_loop(ctx: ActorContext, core: DispatcherCore, wake: _Wake, storage: Address,
                      workers: Address, config: DispatcherConfig) -> None:
    while True:
        want = core.want(config.lease_max)
        if want == 0:
            await wake.event.wait()
            continue
        core.granted(want)  # reserved: the other lease request cannot take these slots
        jobs = await _lease(ctx, storage, config, want)
        core.freed(want - len(jobs))
        if jobs:
            await ctx.send(workers, RunJobs(jobs))
        if len(jobs) < want:
            wake.set()


async def _lease(
    ctx: ActorContext, storage: Address, config: DispatcherConfig, want: int
) -> tuple[JobRecord, ...]:
    lease = LeaseJobs(ctx.node.name, config.queues, want, config.lease_timeout_s)
    try:
        reply = await ctx.call(
            storage, LeaseWait(lease, config.wait_s), timeout_s=config.wait_s + 10
        )
    except (ActorError, trio.BrokenResourceError) as exc:
        log.warning("lease from %s failed (%s); retrying", storage, exc)
        await trio.sleep(config.retry_backoff_s * ctx.node.world.jitter(0.5, 1.5))
        return ()
    assert isinstance(reply, LeaseReply), reply
    return reply.jobs


async def _inbox_loop(
    ctx: ActorContext, core: DispatcherCore, storage: Address, notify: Callable[[], None]
) -> None:
    while True:
        for env in await ctx.receive_batch():
            match env.msg:
                case SlotsFreed(count=count):
                    core.freed(count)
                case PauseWorkers(paused=paused):
                    core.paused = paused
                    if paused:
                        await ctx.call(storage, Unpark(ctx.node.name))
                    await ctx.reply(env, Ok())
                case other:
                    log.warning("dispatcher ignored unexpected %s", type(other).__name__)
            notify()
