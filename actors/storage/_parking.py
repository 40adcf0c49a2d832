"""Parked `LeaseWait`s and the one rule that wakes them: pure, for every storage shell.

Rules of this module:
- A `LeaseWait` whose lease found nothing is parked until jobs may be ready for it, or
  until its deadline (then it is answered empty). The lot does no IO and reads no clock:
  `mono` is the shell's monotonic time (seconds), storage times are the store's clock.
- A wait is `start`ed when its lease is sent to the store and comes back through
  `leased`: answered at once (it got jobs, its deadline passed, or its node was
  unparked meanwhile) or parked. `take` hands out the parked waits to answer empty
  (deadline) and those to lease again (woken, or a job of theirs is due).
- One wake rule, "queue Q may have jobs since storage time T": `wake(queues, at=T)`
  wakes a wait of Q whose last lease ran at storage time T or before; an older event
  does not (that lease saw those jobs; equal times count, which ran first is unknown).
  `wake(queues)` without a time is a command of this shell sent after every lease
  already sent, so it wakes every wait of Q sent before it, parked or in flight;
  `wake_all()` does so for every queue (a lost event stream, or a command whose queues
  are not known).
- Wakes are numbered; a wait remembers the number when its lease was last sent
  (`seen`), so a wake that came while the lease was in flight still counts when it
  comes back, and one that came before it was sent does not.
- Timers: a lease says when the next job of its queues is due, and `due` events say it
  too (storage time); the lot turns them into local time with the latest skew (storage
  time minus local time, `observe`) and leases again then. A timer lasts until it runs
  out, across the wait's leases in between. A due time of a queue not known (`None`)
  counts for every wait.
- Bounded: `start` refuses a wait past `parked_max` parked ones (`StorageError`), so at
  most `parked_max` plus the leases in flight are held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import attrs

from gotask._errors import StorageError

from .base import LeaseJobs, LeaseReply

__all__ = ["PARKED_MAX", "ParkingLot", "Wait"]

PARKED_MAX = 10_000

R = TypeVar("R")


@attrs.define(eq=False)
class Wait(Generic[R]):
    """One `LeaseWait`: its request, its lease and when to answer it empty (local time)."""

    request: R
    lease: LeaseJobs
    deadline: float
    seen: int
    recheck_at: float = math.inf  # local time: a job of its queues may be due then
    leased_at: float = -math.inf  # storage time its lease last ran at

    def queues(self) -> Iterator[str]:
        """The names of the queues it leases from."""
        return (q.name for q in self.lease.queues)


@attrs.define
class ParkingLot(Generic[R]):
    """Parked lease waits and what wakes them; see the module rules.

    Args:
        parked_max: most waits parked at once.
    """

    parked_max: int = PARKED_MAX
    skew: float = 0.0  # storage time minus local time, from the latest answer or event
    _parked: list[Wait[R]] = attrs.field(factory=list, init=False)
    _wakes: int = attrs.field(default=0, init=False)
    _event_seq: dict[str, int] = attrs.field(factory=dict, init=False)
    _event_at: dict[str, float] = attrs.field(factory=dict, init=False)
    _local_seq: dict[str, int] = attrs.field(factory=dict, init=False)
    _all_seq: int = attrs.field(default=0, init=False)
    _due: dict[str | None, tuple[int, float]] = attrs.field(factory=dict, init=False)
    _unparked: dict[str, int] = attrs.field(factory=dict, init=False)

    def __len__(self) -> int:
        """Number of parked waits."""
        return len(self._parked)

    def start(self, request: R, lease: LeaseJobs, wait_s: float, mono: float) -> Wait[R]:
        """A wait whose lease is sent now; answer it empty after `wait_s` seconds.

        Raises:
            StorageError: `parked_max` waits are parked already.
        """
        if len(self._parked) >= self.parked_max:
            raise StorageError(f"too many parked leases (limit {self.parked_max})")
        return Wait(request, lease, mono + wait_s, self._wakes)

    def leased(self, wait: Wait[R], reply: LeaseReply, leased_at: float,
               next_due: float | None, mono: float) -> bool:
        """The wait's lease came back (run at storage time `leased_at`).

        Returns:
            True if the wait is to be answered with `reply` now; False if it is parked.
        """
        self.skew = leased_at - mono
        wait.leased_at = leased_at
        unparked = self._unparked.get(wait.lease.node, -1) > wait.seen
        if reply.jobs or wait.deadline <= mono or unparked:
            return True
        due = min(math.inf if next_due is None else next_due, self._due_since(wait))
        # A timer set before this lease was sent and not yet run out still counts.
        wait.recheck_at = mono if self._woken_since(wait) else min(wait.recheck_at,
                                                                   due - self.skew)
        self._parked.append(wait)
        return False

    def observe(self, now: float, mono: float) -> None:
        """The store's clock read `now` at local time `mono`."""
        self.skew = now - mono

    def wake(self, queues: Iterable[str], at: float | None = None) -> None:
        """Queues may have jobs since storage time `at` (None: a command of this shell
        sent after every lease already sent)."""
        self._wakes += 1
        for queue in queues:
            if at is None:
                self._local_seq[queue] = self._wakes
            else:
                self._event_seq[queue] = self._wakes
                self._event_at[queue] = max(self._event_at.get(queue, -math.inf), at)

    def wake_all(self) -> None:
        """Every queue may have jobs: every wait sent before now leases again."""
        self._wakes += 1
        self._all_seq = self._wakes

    def due(self, queue: str | None, due_at: float, now: float | None) -> None:
        """A job of `queue` (None: of a queue not known) becomes due at storage time
        `due_at` (told at `now`)."""
        self._wakes += 1
        _, earliest = self._due.get(queue, (0, math.inf))
        if now is not None and earliest <= now:
            earliest = math.inf  # that one came and went
        self._due[queue] = (self._wakes, min(earliest, due_at))
        for wait in self._parked:
            if queue is None or queue in wait.queues():
                wait.recheck_at = min(wait.recheck_at, due_at - self.skew)

    def due_after(self, queue: str | None, delay_s: float, mono: float) -> None:
        """A job of `queue` becomes due `delay_s` seconds after local time `mono`."""
        now = mono + self.skew
        self.due(queue, now + delay_s, now)

    def unpark(self, node: str) -> list[R]:
        """Take out the waits of `node` (its leases in flight are answered when they
        come back); returns their requests, to answer empty."""
        self._wakes += 1
        self._unparked[node] = self._wakes
        mine = [w.request for w in self._parked if w.lease.node == node]
        if mine:
            self._parked = [w for w in self._parked if w.lease.node != node]
        return mine

    def take(self, mono: float) -> tuple[list[R], list[Wait[R]]]:
        """Take out the waits whose deadline passed (their requests, to answer empty)
        and those to lease again now (marked as sent)."""
        expired: list[R] = []
        relet: list[Wait[R]] = []
        still: list[Wait[R]] = []
        for wait in self._parked:
            if wait.deadline <= mono:
                expired.append(wait.request)
            elif wait.recheck_at <= mono or self._woken_since(wait):
                if wait.recheck_at <= mono:
                    wait.recheck_at = math.inf
                wait.seen = self._wakes
                relet.append(wait)
            else:
                still.append(wait)
        self._parked = still
        return expired, relet

    def next_wakeup(self) -> float:
        """When `take` has something to do next (local time; -inf: now)."""
        soonest = math.inf
        for wait in self._parked:
            if self._woken_since(wait):
                return -math.inf
            soonest = min(soonest, wait.deadline, wait.recheck_at)
        return soonest

    def _woken_since(self, wait: Wait[R]) -> bool:
        """True if jobs may have become ready for `wait` since its lease was sent."""
        if self._all_seq > wait.seen:
            return True
        seen, leased_at = wait.seen, wait.leased_at
        events, event_at, local = self._event_seq, self._event_at, self._local_seq
        return any(local.get(q, 0) > seen
                   or (events.get(q, 0) > seen and event_at.get(q, math.inf) >= leased_at)
                   for q in wait.queues())

    def _due_since(self, wait: Wait[R]) -> float:
        """The earliest due time (storage clock) told since its lease was sent."""
        hints = (self._due.get(q) for q in (*wait.queues(), None))
        return min((at for seq, at in filter(None, hints) if seq > wait.seen),
                   default=math.inf)
