"""The Reaper: requeues expired leases, purges old results, keeps the node registry.

Rules of this module:
- `ReaperCore` is pure. A round starts at the first tick and then `interval_s` after
  the previous round ended; it is a fixed sequence of storage calls, one in flight at a
  time: `RegisterNode` for this node (liveness for `gotask nodes`, with the facts the
  shell put in the `ReaperTick`), `RequeueExpired` (again at once while a full batch came
  back; a lease that expired counts as a failed attempt, exhausted jobs go to the DLQ;
  each answer is a `LeasesExpired` metric event),
  `PurgeExpired` (finished jobs past their result TTL) and `ExpireNodes`.
- A failed call ends the round with a warning; the next round comes at the interval.
- Lease expiry is judged by the storage clock, never by this node's.
- Several nodes may run a Reaper on one storage: each operation is idempotent.
- `run_reaper` is the thin shell (`actors._shell`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, assert_never

import attrs
import trio

from gotask._job_metrics import JobMetrics, LeasesExpired
from gotask.runtime import ActorContext, Address, Envelope

from ._effects import Call, Called, CallFailed, Effect, JobEvent, Log, unknown_message
from ._shell import Shell
from .storage.base import (
    ExpireNodes,
    PurgeExpired,
    RegisterNode,
    RequeueExpired,
    RequeueExpiredReply,
)

__all__ = ["REAP_LIMIT", "ReaperCore", "ReaperMsg", "ReaperTick", "run_reaper"]

log = logging.getLogger("gotask.reaper")
REAP_LIMIT = 1000
#: The steps of a round, in order.
REGISTER, REQUEUE, PURGE, EXPIRE = "register", "requeue", "purge", "expire"


@attrs.frozen
class ReaperTick:
    """Time for the Reaper (`now`, monotonic seconds) and this node's current facts."""

    now: float
    info: dict[str, Any]


#: Everything the Reaper's inbox may hold.
ReaperMsg = ReaperTick | Called | CallFailed
REAPER_MSGS = (ReaperTick, Called, CallFailed)


@attrs.define
class ReaperCore:
    """The Reaper's round, pure: which storage call comes next."""

    node: str
    storage: Address
    interval_s: float = 1.0
    node_ttl_s: float = 15.0
    limit: int = REAP_LIMIT
    next_at: float = -math.inf
    #: The step whose call is in flight (None between rounds).
    step: str | None = None

    def deadline(self) -> float:
        """When the next round starts (never while one runs)."""
        return math.inf if self.step is not None else self.next_at

    def handle(self, msg: ReaperMsg, now: float, request: Envelope | None = None) -> list[Effect]:
        """Apply one message; return the effects to carry out."""
        match msg:
            case ReaperTick(info=info):
                if self.step is not None or now < self.next_at:
                    return []
                return [self._call(REGISTER, RegisterNode(self.node, info, self.node_ttl_s))]
            case Called(tag=tag, reply=reply):
                return self._answered(tag, reply, now) if tag == self.step else []
            case CallFailed(tag=tag, error=error):
                if tag != self.step:
                    return []
                self._end_round(now)
                return [Log(logging.WARNING, f"reaping at {self.storage} failed: {error}")]
            case _:
                assert_never(msg)

    def _call(self, step: str, cmd: Any) -> Call:
        self.step = step
        return Call(self.storage, cmd, step)

    def _end_round(self, now: float) -> None:
        self.step = None
        self.next_at = now + self.interval_s

    def _answered(self, step: str, reply: object, now: float) -> list[Effect]:
        if step == REGISTER:
            return [self._call(REQUEUE, RequeueExpired(self.limit))]
        if step == REQUEUE:
            return self._requeued(reply, now)
        if step == PURGE:
            return [self._call(EXPIRE, ExpireNodes())]
        self._end_round(now)
        return []

    def _requeued(self, reply: object, now: float) -> list[Effect]:
        if not isinstance(reply, RequeueExpiredReply):
            self._end_round(now)
            return unknown_message("reaper", reply, None)
        effects: list[Effect] = [
            JobEvent("lease expired", job_id, detail=detail)
            for ids, detail in ((reply.requeued, "queued again"),
                                (reply.dead, "out of attempts: moved to the dead-letter queue"),
                                (reply.cancelled, "cancelled, as was asked"))
            for job_id in ids]
        if reply.requeued or reply.dead or reply.cancelled:
            effects.append(LeasesExpired(len(reply.requeued), len(reply.dead),
                                         len(reply.cancelled)))
        if reply.dead:
            effects.append(Log(logging.WARNING, "jobs moved to the dead-letter queue after "
                                                f"lease expiry: {', '.join(reply.dead[:10])}"))
        if len(reply.requeued) + len(reply.dead) + len(reply.cancelled) >= self.limit:
            effects.append(self._call(REQUEUE, RequeueExpired(self.limit)))
        else:
            effects.append(self._call(PURGE, PurgeExpired(self.limit)))
        return effects


async def run_reaper(
    ctx: ActorContext,
    *,
    storage: Address,
    node_info: Callable[[], dict[str, Any]],
    interval_s: float = 1.0,
    node_ttl_s: float = 15.0,
    metrics: JobMetrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reap every `interval_s` seconds; register this node with a `node_ttl_s` liveness."""
    core = ReaperCore(ctx.node.name, storage, interval_s, node_ttl_s)

    def tick(now: float) -> ReaperTick:
        return ReaperTick(now, node_info())

    async with trio.open_nursery() as nursery:
        task_status.started()
        await Shell(ctx, nursery, log, REAPER_MSGS, tick, metrics=metrics).serve(core)
        nursery.cancel_scope.cancel()
