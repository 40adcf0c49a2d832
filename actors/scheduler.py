"""The Scheduler: makes delayed and retry jobs due on time.

Rules of this module:
- `SchedulerCore` is pure: it keeps a heap of timers (when each periodic duty next
  fires) and turns a `Tick` past the earliest into a storage call. Today one duty,
  `promote`, asks storage every `interval_s` to promote due `scheduled` jobs
  (`PromoteDue`), again at once while a full batch came back. Cron entries (issue 15)
  join the same heap, one timer per entry, decided by `_scheduler_cron.CronDuties`
  (registration at start, then one compare-and-set fire per due tick).
- A duty never has two calls in flight: its timer is re-armed only when storage has
  answered (or failed, in which case it is logged and tried at the next interval).
- Due times are judged by the storage clock. Several nodes may run a Scheduler against
  the same storage: promotion is idempotent.
- `run_scheduler` is the thin shell (`actors._shell`).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import assert_never

import attrs
import trio

from gotask._app import App, pack_args
from gotask.runtime import ActorContext, Address, Envelope

from ._effects import Call, Called, CallFailed, Effect, Log, Tick, unknown_message
from ._scheduler_cron import CRON_REGISTER, CronDuties, CronJobDefaults
from ._shell import Shell
from .storage.base import PromoteDue, PromoteDueReply

__all__ = ["PROMOTE_LIMIT", "SchedulerCore", "SchedulerMsg", "cron_duties", "run_scheduler"]

log = logging.getLogger("gotask.scheduler")
PROMOTE_LIMIT = 1000
PROMOTE = "promote"

#: Everything the Scheduler's inbox may hold.
SchedulerMsg = Tick | Called | CallFailed
SCHEDULER_MSGS = (Tick, Called, CallFailed)


@attrs.define
class SchedulerCore:
    """The Scheduler's decisions, pure: which duty is due and what to ask storage."""

    storage: Address
    interval_s: float = 0.2
    limit: int = PROMOTE_LIMIT
    #: (when, duty) for every duty waiting for its time; a duty in flight is absent.
    timers: list[tuple[float, str]] = attrs.Factory(list)
    started: bool = False
    #: The cron duties, sharing `timers` (None: no cron entries on this node).
    cron: CronDuties | None = None

    def deadline(self) -> float:
        """When the earliest timer fires (-inf before the first tick)."""
        if not self.started:
            return -math.inf
        return self.timers[0][0] if self.timers else math.inf

    def handle(
        self, msg: SchedulerMsg, now: float, request: Envelope | None = None
    ) -> list[Effect]:
        """Apply one message; return the effects to carry out."""
        match msg:
            case Tick():
                return self._tick(now)
            case Called(tag=tag, reply=reply):
                return self._answered(tag, reply, now)
            case CallFailed(tag=tag, error=error):
                if self.cron is not None and tag == CRON_REGISTER:
                    return self.cron.register_failed(error, now)
                if self.cron is not None and isinstance(tag, str) and tag.startswith("cron:"):
                    return self.cron.fire_failed(tag, error, now)
                if tag != PROMOTE:
                    return []
                heapq.heappush(self.timers, (now + self.interval_s, PROMOTE))
                return [Log(logging.WARNING, f"promoting due jobs at {self.storage} failed: "
                                             f"{error}")]
            case _:
                assert_never(msg)

    def _tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if not self.started:  # the first promotion comes one interval after start
            self.started = True
            heapq.heappush(self.timers, (now + self.interval_s, PROMOTE))
            if self.cron is not None:
                effects += self.cron.start()
        while self.timers and self.timers[0][0] <= now:
            _, duty = heapq.heappop(self.timers)
            if duty == PROMOTE or self.cron is None:
                effects.append(self._fire(duty))
            else:
                effects += self.cron.due(duty, now)
        return effects

    def _fire(self, duty: str) -> Effect:
        return Call(self.storage, PromoteDue(self.limit), duty)

    def _answered(self, tag: object, reply: object, now: float) -> list[Effect]:
        if self.cron is not None and tag == CRON_REGISTER:
            return self.cron.registered(reply, now)
        if self.cron is not None and isinstance(tag, str) and tag.startswith("cron:"):
            return self.cron.fired(tag, reply, now)
        if tag != PROMOTE:
            return []
        if isinstance(reply, PromoteDueReply) and reply.promoted >= self.limit:
            return [self._fire(PROMOTE)]  # more may be due: go on at once
        heapq.heappush(self.timers, (now + self.interval_s, PROMOTE))
        if not isinstance(reply, PromoteDueReply):
            return unknown_message("scheduler", reply, None)
        return []


async def run_scheduler(
    ctx: ActorContext,
    *,
    storage: Address,
    interval_s: float = 0.2,
    app: App | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Promote due jobs every `interval_s` seconds; fire `app`'s cron entries."""
    core = SchedulerCore(storage, interval_s)
    if app is not None and app.cron_entries():
        core.cron = cron_duties(app, ctx.node.name, storage, ctx.node.world.new_id,
                                core.timers)
    async with trio.open_nursery() as nursery:
        task_status.started()
        await Shell(ctx, nursery, log, SCHEDULER_MSGS).serve(core)
        nursery.cancel_scope.cancel()


def cron_duties(app: App, node: str, storage: Address, new_id: Callable[[], str],
                timers: list[tuple[float, str]]) -> CronDuties:
    """The cron duties of `app`'s entries, sharing the Scheduler's `timers`."""
    entries = {e.name: e for e in app.cron_entries()}
    defaults = {}
    for name, entry in entries.items():
        task = app.get(entry.task)
        defaults[name] = CronJobDefaults(task.queue, task.priority, task.max_attempts,
                                         task.timeout_s, task.result_ttl_s)
    args = {name: pack_args(e.args, e.kwargs) for name, e in entries.items()}
    return CronDuties(node, storage, entries, defaults, args, new_id, timers)
