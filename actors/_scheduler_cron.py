"""The Scheduler's cron duties (issue 15): which entry fires which tick, purely.

Rules of this module:
- `CronDuties` is pure: the Scheduler's core asks it for effects at start, when an
  entry's timer is due, and when storage answers. It reads no clock: `now` is the
  shell's monotonic time, and the storage clock is estimated as `now + offset`, the
  offset taken from the storage time every cron reply carries.
- At start the node registers its app's entries (`CronRegister`) and learns each
  entry's last fired tick and the storage clock. Changed definitions (this node's
  wins, being the newest registration) and stored entries this app lacks (they stop
  firing wherever no app declares them) are logged as warnings.
- An entry has at most one call in flight. When its next tick is due by the estimated
  storage clock it sends `CronFire(expected=last, tick=new_last, jobs)`: the ticks to
  fire are `CronEntry.due_ticks` (the misfire policy), each job keyed `cron:NAME:TICK`.
  Storage's compare-and-set makes one node's fire win; the others read "stale" and
  move on to the next tick. "early" (this node's estimate ran ahead of the storage
  clock) re-arms the timer at the tick by the corrected estimate.
- A failed call re-arms the entry after `retry_s`; its last fired tick is unchanged, so
  the retry is again a compare-and-set and cannot fire a tick twice. An entry storage
  no longer holds ("missing", e.g. a memory store restarted) is registered again; a
  registration arms only entries not armed yet, so no entry ever has two timers.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Mapping

import attrs

from gotask._cron import CronEntry, cron_key
from gotask._job import NewJob
from gotask.runtime import Address

from ._effects import Call, Effect, Log
from .storage import base as b

__all__ = ["CRON_REGISTER", "CronDuties", "CronJobDefaults", "build_job", "cron_duty"]

CRON_REGISTER = "cron-register"
_PREFIX = "cron:"


def cron_duty(name: str) -> str:
    """The timer tag of entry `name`."""
    return _PREFIX + name


@attrs.frozen
class CronJobDefaults:
    """What a job of an entry takes from its task (the entry may override queue and
    priority; `options` may override the rest)."""

    queue: str
    priority: int
    max_attempts: int
    timeout_s: float | None
    result_ttl_s: float


@attrs.define
class CronDuties:
    """The cron half of the Scheduler's core.

    Args:
        node: this node's name (recorded with its registration).
        storage: the storage actor's address.
        entries: the app's entries by name. defaults: each entry's task defaults.
        args: each entry's packed arguments. new_id: job ids from the World.
        timers: the Scheduler's heap of (when, duty), shared with its other duties.
    """

    node: str
    storage: Address
    entries: Mapping[str, CronEntry]
    defaults: Mapping[str, CronJobDefaults]
    args: Mapping[str, bytes]
    new_id: Callable[[], str]
    timers: list[tuple[float, str]]
    retry_s: float = 1.0
    offset: float | None = None
    last: dict[str, int] = attrs.Factory(dict)
    #: What each in-flight fire asked for: name -> new last fired tick.
    pending: dict[str, int] = attrs.Factory(dict)

    def start(self) -> list[Effect]:
        """Register the entries (nothing when the app declares none)."""
        if not self.entries:
            return []
        defs = tuple(b.CronDef(name, e.definition()) for name, e in sorted(self.entries.items()))
        return [Call(self.storage, b.CronRegister(self.node, defs), CRON_REGISTER)]

    def registered(self, reply: object, now: float) -> list[Effect]:
        """Storage answered the registration: arm every entry."""
        if not isinstance(reply, b.CronRegisterReply):
            return self.register_failed(f"unexpected reply {type(reply).__name__}", now)
        effects: list[Effect] = []
        if reply.states:
            self.offset = reply.states[0].registered_at - now
        for state in reply.states:
            if state.name in self.last:  # armed already (a timer or a call in flight)
                continue
            self.last[state.name] = state.last_tick
            self._arm(state.name)
        if reply.changed:
            effects.append(Log(logging.WARNING, "cron entries whose stored definition "
                               "differed, replaced by this node's: " + ", ".join(reply.changed)))
        if reply.unknown:
            effects.append(Log(logging.WARNING, "cron entries stored but not declared by "
                               "this app (they fire only where an app declares them): "
                               + ", ".join(reply.unknown)))
        return effects

    def register_failed(self, error: str, now: float) -> list[Effect]:
        """Registration failed: try again after `retry_s`."""
        heapq.heappush(self.timers, (now + self.retry_s, CRON_REGISTER))
        return [Log(logging.WARNING, f"registering cron entries failed: {error}")]

    def due(self, duty: str, now: float) -> list[Effect]:
        """A timer fired: registration again, or an entry's tick."""
        if duty == CRON_REGISTER:
            return self.start()
        name = duty[len(_PREFIX):]
        entry, last = self.entries[name], self.last[name]
        assert self.offset is not None
        ticks, new_last = entry.due_ticks(last, now + self.offset)
        if new_last == last:  # the estimate says not yet: wait for the tick
            self._arm(name)
            return []
        self.pending[name] = new_last
        jobs = tuple(self._job(entry, tick) for tick in ticks)
        return [Call(self.storage, b.CronFire(name, last, new_last, jobs), duty)]

    def fired(self, duty: str, reply: object, now: float) -> list[Effect]:
        """Storage answered an entry's fire."""
        name = duty[len(_PREFIX):]
        asked = self.pending.pop(name, None)
        if not isinstance(reply, b.CronFireReply) or asked is None:
            return self.fire_failed(duty, f"unexpected reply {type(reply).__name__}", now)
        self.offset = reply.now - now
        if reply.outcome == b.CRON_MISSING:  # storage lost it: register it again
            del self.last[name]
            heapq.heappush(self.timers, (now + self.retry_s, CRON_REGISTER))
            return [Log(logging.WARNING, f"cron entry {name!r} is not in storage; "
                                         "registering it again")]
        if reply.last_tick is not None:
            self.last[name] = reply.last_tick
        if reply.outcome == b.CRON_EARLY:
            heapq.heappush(self.timers, (asked - self.offset, duty))
        else:
            self._arm(name)
        return []

    def fire_failed(self, duty: str, error: str, now: float) -> list[Effect]:
        """A fire failed or went unanswered: try again later, still a compare-and-set."""
        self.pending.pop(duty[len(_PREFIX):], None)
        heapq.heappush(self.timers, (now + self.retry_s, duty))
        return [Log(logging.WARNING, f"firing cron entry {duty[len(_PREFIX):]!r} failed: "
                                     f"{error}")]

    def _arm(self, name: str) -> None:
        assert self.offset is not None
        tick = self.entries[name].next_tick(self.last[name])
        heapq.heappush(self.timers, (tick - self.offset, cron_duty(name)))

    def _job(self, entry: CronEntry, tick: int) -> NewJob:
        return build_job(entry, self.defaults[entry.name], self.args[entry.name],
                         self.new_id(), tick)


def build_job(entry: CronEntry, d: CronJobDefaults, args: bytes, job_id: str,
              tick: int | None) -> NewJob:
    """The job of `entry` for `tick`, keyed `cron:NAME:TICK` (None: a manual run, no key,
    no jitter)."""
    opts = entry.options
    return NewJob(
        id=job_id, task=entry.task, queue=entry.queue or d.queue, args=args,
        priority=d.priority if entry.priority is None else entry.priority,
        delay_s=entry.jitter_for(tick) if tick is not None else 0.0,
        max_attempts=opts.get("max_attempts", d.max_attempts),
        timeout_s=opts.get("timeout_s", d.timeout_s),
        result_ttl_s=opts.get("result_ttl_s", d.result_ttl_s),
        idempotency_key=cron_key(entry.name, tick) if tick is not None else None)
