"""The Dispatcher: leases jobs for its node's free worker slots.

Rules of this module:
- `DispatcherCore` is pure. It counts slots: `capacity` = concurrency plus a prefetch, so
  workers find the next job already leased when they finish one. Slots are reserved
  when a lease is asked for and given back for every job storage did not grant.
- It leases with `LeaseWait`: storage answers at once when jobs are due, or parks the
  request until some are (the wake-up). It never busy-polls. At most `leases_in_flight`
  requests are at storage at once, each for at most `lease_max` slots, so storage works
  on the next lease while the previous answer travels.
- One lease carries many jobs and becomes one `RunJobs` message; freed slots come back
  as one `SlotsFreed` per batch of acknowledgements. The cost is per message, not per job.
- Storage unreachable: lease again after a jittered backoff (a `Tick` past the core's
  deadline); leased jobs are never lost, since a lease nobody acts on expires and the
  Reaper requeues it.
- `PauseWorkers(True)` stops leasing and answers once storage has let go of this node's
  parked lease (`Unpark`); `PauseWorkers(False)` resumes.
- `run_dispatcher` is the thin shell (`actors._shell`).
"""

from __future__ import annotations

import logging
import math
from typing import assert_never

import attrs
import trio

from gotask._messages import LeaseWait, PauseWorkers, RunJobs, SlotsFreed, Unpark
from gotask.runtime import ActorContext, Address, Envelope, ErrorReply, Ok, Respond, Send

from ._effects import Call, Called, CallFailed, Effect, Log, Tick, unknown_message
from ._shell import Shell
from .storage.base import LeaseJobs, LeaseReply, QueueWeight

__all__ = ["DispatcherConfig", "DispatcherCore", "DispatcherMsg", "run_dispatcher"]

log = logging.getLogger("gotask.dispatcher")

#: Everything the Dispatcher's inbox may hold.
DispatcherMsg = SlotsFreed | PauseWorkers | Tick | Called | CallFailed
DISPATCHER_MSGS = (SlotsFreed, PauseWorkers, Tick, Called, CallFailed)


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


@attrs.frozen
class _Lease:
    """Tag of a lease request: the slots it reserved."""

    want: int


@attrs.frozen
class _Unpark:
    """Tag of the `Unpark` a pause makes: the pause request to answer."""

    request: Envelope | None


@attrs.define
class DispatcherCore:
    """The Dispatcher's decisions, pure: how many jobs to lease, when, and where to."""

    node: str
    storage: Address
    workers: Address
    config: DispatcherConfig = attrs.Factory(DispatcherConfig)
    capacity: int = attrs.field()
    free: int = attrs.field()
    paused: bool = False
    in_flight: int = 0
    started: bool = False
    #: No lease before this time: a failed lease's backoff (None: no backoff).
    retry_at: float | None = None

    @capacity.default
    def _capacity(self) -> int:
        return self.config.concurrency + self.config.prefetch

    @free.default
    def _all_free(self) -> int:
        return self.capacity

    def deadline(self) -> float:
        """When a tick may start a lease: at once before the first lease, at the end of
        a backoff, else never (a message starts it)."""
        if not self.started:
            return -math.inf
        return math.inf if self.retry_at is None else self.retry_at

    def handle(
        self, msg: DispatcherMsg, now: float, request: Envelope | None = None
    ) -> list[Effect]:
        """Apply one message; return the effects to carry out."""
        match msg:
            case SlotsFreed(count=count):
                self.free = min(self.capacity, self.free + count)
                return self._lease(now)
            case PauseWorkers(paused=paused):
                return self._pause(paused, request, now)
            case Tick():
                self.started = True
                return self._lease(now)
            case Called(tag=_Lease(want=want), reply=reply):
                return self._granted(want, reply, now)
            case CallFailed(tag=_Lease(want=want), error=error, jitter=jitter):
                self.in_flight -= 1
                self.free = min(self.capacity, self.free + want)
                self.retry_at = now + self.config.retry_backoff_s * jitter
                return [Log(logging.WARNING,
                            f"lease from {self.storage} failed ({error}); retrying")]
            case Called(tag=_Unpark(request=pause)):
                return [Respond(pause, Ok())] if pause is not None else []
            case CallFailed(tag=_Unpark(request=pause), error_type=kind, error=error):
                return [Respond(pause, ErrorReply(kind, error, ""))] if pause is not None else []
            case Called() | CallFailed():
                return []  # an answer to a call of an earlier life of this actor
            case _:
                assert_never(msg)

    def want(self) -> int:
        """How many jobs the next lease asks for (0 when paused or full)."""
        if self.paused or self.in_flight >= self.config.leases_in_flight:
            return 0
        return min(self.free, self.config.lease_max)

    def _lease(self, now: float) -> list[Effect]:
        if self.retry_at is not None:
            if now < self.retry_at:
                return []
            self.retry_at = None
        effects: list[Effect] = []
        while (want := self.want()) > 0:
            self.free -= want  # reserved: another lease request cannot take these slots
            self.in_flight += 1
            lease = LeaseJobs(self.node, self.config.queues, want, self.config.lease_timeout_s)
            effects.append(Call(self.storage, LeaseWait(lease, self.config.wait_s),
                                _Lease(want), self.config.wait_s + 10))
        return effects

    def _granted(self, want: int, reply: object, now: float) -> list[Effect]:
        self.in_flight -= 1
        if not isinstance(reply, LeaseReply):
            self.free = min(self.capacity, self.free + want)
            return unknown_message("dispatcher", reply, None) + self._lease(now)
        jobs = reply.jobs
        self.free = min(self.capacity, self.free + want - len(jobs))
        effects: list[Effect] = [Send(self.workers, RunJobs(jobs))] if jobs else []
        return effects + self._lease(now)

    def _pause(self, paused: bool, request: Envelope | None, now: float) -> list[Effect]:
        self.paused = paused
        if paused:
            return [Call(self.storage, Unpark(self.node), _Unpark(request))]
        effects: list[Effect] = [Respond(request, Ok())] if request is not None else []
        return effects + self._lease(now)


async def run_dispatcher(
    ctx: ActorContext,
    *,
    storage: Address,
    workers: Address,
    config: DispatcherConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Lease jobs for free slots and hand them to the WorkerSupervisor."""
    core = DispatcherCore(ctx.node.name, storage, workers, config)
    async with trio.open_nursery() as nursery:
        task_status.started()
        await Shell(ctx, nursery, log, DISPATCHER_MSGS).serve(core)
        nursery.cancel_scope.cancel()
