"""The decisions of the storage actor shell, as a pure core shared by every backend.

Rules of this module:
- `StorageShellCore` decides what the shell answers, pushes, parks and wakes; it does
  no IO, reads no clock and never awaits. The shell gives it what arrived (`plan`), has
  the backend execute the commands it planned, and gives it their results (`settle`);
  both return `Effect`s for the shell to carry out in order.
- `plan` turns one inbox batch into one store batch: the commands that arrived, in
  order; then follow-ups of earlier results (releasing what a lease reply had no room
  for, reading cancelled jobs); then the leases of parked waits to run again; then the
  reads refreshing watched jobs that changed. So a parked lease of a queue runs right
  after an enqueue to it, in the same round trip.
- Every inbox message is answered: a storage command by its reply or error, a
  `LeaseWait` when it gets jobs, times out or its node is unparked (`_parking`), a
  watch by the jobs' records; anything else (not a storage message) with a
  `TypeError`. Nothing is logged and dropped.
- Pages are cut and reads by id checked to fit one wire frame (`_reply_bytes`).
- A lease reply is cut to `LEASE_REPLY_BYTES_MAX` (estimated from the jobs' arguments)
  so it fits one wire frame; the jobs cut off are released by a follow-up command (they
  keep their place, and the attempt does not count).
- Watchers (`WatchBook`) get a `JobChanged` for a watched job when its record changed
  from the one they all saw last; a watch ends by itself when its job is terminal, and
  a watcher that cannot be reached loses its watch (`lost`), never the job.
- What changed and what woke comes from the commands of this shell when the store is
  not `shared`, and from the store's `StorageEvents` when it is (other nodes change it).
- A result that is an exception other than `EXPECTED_ERRORS` is a bug: `settle` raises
  it, crashing the actor (its supervisor restarts it around the same store).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Generic, TypeAlias, TypeVar, assert_never, cast, get_args

import attrs

from gotask._errors import ReplyTooLarge
from gotask._job import TERMINAL, JobRecord, LeaseToken
from gotask._messages import (
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    Unpark,
    UnwatchJobs,
    WatchJobs,
)
from gotask.actors._watch import WatchBook
from gotask.runtime import Address, Ok

from . import base as b
from ._backend import (
    EXPECTED_ERRORS,
    JOB_OVERHEAD_BYTES,
    LEASE_REPLY_BYTES_MAX,
    Leased,
    StorageEvents,
    WatchRead,
)
from ._parking import PARKED_MAX, ParkingLot, Wait
from ._reply_bytes import check_records, fit_reply

__all__ = ["Answer", "Batch", "Effect", "Push", "Refuse", "StorageInbox", "StorageShellCore",
           "cut_lease"]

R = TypeVar("R")

#: What a storage actor's inbox holds.
StorageInbox: TypeAlias = (
    b.StorageCommand | LeaseWait | WatchJobs | UnwatchJobs | Unpark | StorageEvents
)
_INBOX_TYPES: tuple[type, ...] = (
    *get_args(b.StorageCommand), LeaseWait, WatchJobs, UnwatchJobs, Unpark, StorageEvents)
#: Commands after which queued jobs may be available to a parked lease.
_MAKES_READY = (b.NackJobs, b.ReleaseJobs, b.RequeueExpired, b.RetryDead, b.PromoteDue)


@attrs.frozen
class Answer(Generic[R]):
    """Reply `reply` to `request`."""

    request: R
    reply: Any


@attrs.frozen
class Refuse(Generic[R]):
    """Answer `request` with `error`."""

    request: R
    error: Exception


@attrs.frozen
class Push:
    """Send `msg` to `dst` without waiting; if it cannot go, tell `lost`."""

    dst: Address
    msg: JobChanged | CancelRunning
    job_id: str | None = None  # the watched job a JobChanged is about


Effect: TypeAlias = Answer[R] | Refuse[R] | Push


@attrs.frozen
class _Reply(Generic[R]):
    request: R


@attrs.frozen
class _Lease(Generic[R]):
    wait: Wait[R]


@attrs.frozen
class _Watch(Generic[R]):
    request: R
    msg: WatchJobs


@attrs.frozen
class _Refresh:
    ids: tuple[str, ...]


@attrs.frozen
class _Cancels:
    """A read of cancelled jobs, to tell their nodes' workers."""


@attrs.frozen
class _Quiet:
    """A follow-up nobody waits for."""


_Step: TypeAlias = _Reply[R] | _Lease[R] | _Watch[R] | _Refresh | _Cancels | _Quiet


@attrs.define
class Batch(Generic[R]):
    """What `plan` made of an inbox batch: commands for the store, what to do with each
    one's result, and the effects to carry out before the store is asked."""

    cmds: list[Any] = attrs.Factory(list)
    steps: list[_Step[R]] = attrs.Factory(list)
    effects: list[Effect[R]] = attrs.Factory(list)

    def add(self, cmd: Any, step: _Step[R]) -> None:
        """Send `cmd`; handle its result with `step`."""
        self.cmds.append(cmd)
        self.steps.append(step)


def cut_lease(reply: b.LeaseReply) -> tuple[b.LeaseReply, tuple[LeaseToken, ...]]:
    """`reply` cut to `LEASE_REPLY_BYTES_MAX` (at least one job), and the tokens cut off."""
    size, keep = 0, 0
    for job in reply.jobs:
        size += len(job.args) + JOB_OVERHEAD_BYTES
        if keep and size > LEASE_REPLY_BYTES_MAX:
            break
        keep += 1
    if keep == len(reply.jobs):
        return reply, ()
    return b.LeaseReply(reply.jobs[:keep]), tuple(job.token for job in reply.jobs[keep:])


class StorageShellCore(Generic[R]):
    """The storage shell's decisions; see the module rules.

    Args:
        node: the name of the node the shell runs on.
        shared: the store is changed by other nodes too, and reports `StorageEvents`.
        parked_max: most `LeaseWait`s parked at once.
        watchers: the watch book (bounded; a default one when None).
    """

    def __init__(self, node: str, *, shared: bool, parked_max: int = PARKED_MAX,
                 watchers: WatchBook[Address] | None = None) -> None:
        self.node = node
        self.shared = shared
        self.lot: ParkingLot[R] = ParkingLot(parked_max)
        self.book: WatchBook[Address] = WatchBook() if watchers is None else watchers
        self._pushed: dict[str, JobRecord] = {}  # watched id -> what all watchers saw
        self._touched: set[str] = set()
        self._followups: list[tuple[Any, _Step[R]]] = []

    # -- planning ---------------------------------------------------------------------

    def plan(self, arrived: Iterable[tuple[R, Any]], mono: float) -> Batch[R]:
        """One store batch for the `(request, message)` pairs that arrived; see the rules."""
        batch: Batch[R] = Batch()
        for request, msg in arrived:
            try:
                self._plan_one(batch, request, _inbox_message(msg), mono)
            except EXPECTED_ERRORS as exc:
                batch.effects.append(Refuse(request, exc))
        followups, self._followups = self._followups, []
        for cmd, step in followups:
            batch.add(cmd, step)
        expired, relet = self.lot.take(mono)
        batch.effects += (Answer(request, b.LeaseReply(())) for request in expired)
        for wait in relet:
            batch.add(wait.lease, _Lease(wait))
        if self._touched:
            ids = tuple(i for i in self._touched if i in self.book)
            self._touched.clear()
            if ids:
                batch.add(b.GetJobs(ids), _Refresh(ids))
        return batch

    def _plan_one(self, batch: Batch[R], request: R, msg: StorageInbox, mono: float) -> None:
        match msg:
            case b.LeaseJobs() | b.AckJobs() | b.Heartbeat() | b.EnqueueJobs() \
                    | b.NackJobs() | b.ReportProgress() | b.ReleaseJobs() | b.CancelJobs() \
                    | b.GetJobs() | b.ListJobs() | b.CountJobs() | b.RequeueExpired() \
                    | b.PromoteDue() | b.PurgeExpired() | b.ListDead() | b.RetryDead() \
                    | b.PurgeDead() | b.RegisterNode() | b.ListNodes() | b.ExpireNodes() \
                    | b.CronRegister() | b.CronFire() | b.CronList() | b.CronSetPaused() \
                    | b.SetQueuePaused() | b.QueueInfo():
                self._note_sent(msg, mono)
                batch.add(msg, _Reply(request))
            case LeaseWait():
                if not isinstance(msg.lease, b.LeaseJobs):
                    raise TypeError(f"LeaseWait.lease must be a LeaseJobs, "
                                    f"got {type(msg.lease).__name__}")
                wait = self.lot.start(request, msg.lease, msg.wait_s, mono)
                batch.add(msg.lease, _Lease(wait))
            case WatchJobs():
                # Registered before the read: a change while it runs is not missed.
                self.book.watch(msg.ids, msg.watcher)
                batch.add(WatchRead(msg.ids), _Watch(request, msg))
            case UnwatchJobs():
                self._unwatch(msg.ids, msg.watcher)
                batch.effects.append(Answer(request, Ok()))
            case Unpark():
                batch.effects += (Answer(r, b.LeaseReply(())) for r in self.lot.unpark(msg.node))
                batch.effects.append(Answer(request, Ok()))
            case StorageEvents():
                batch.effects += self._take_events(msg, mono)
            case _:
                assert_never(msg)

    def _note_sent(self, cmd: b.StorageCommand, mono: float) -> None:
        """Wake the parked leases a command of this shell may give jobs to.

        An enqueue (or a cron fire) wakes its queues (on a shared store too, to save a
        round trip), and where no events tell, sets their timers for its delayed jobs;
        a resumed queue wakes its waits (on a shared store too, as an enqueue does);
        other commands that make jobs ready wake every queue where no events tell which,
        and a nack sets every wait's timer for its earliest retry.
        """
        if isinstance(cmd, b.EnqueueJobs | b.CronFire):  # a cron fire enqueues its jobs
            ready: set[str] = set()
            for job in cmd.jobs:
                if job.delay_s <= 0:
                    ready.add(job.queue)
                elif not self.shared:
                    self.lot.due_after(job.queue, job.delay_s, mono)
            if ready:
                self.lot.wake(ready)
        elif isinstance(cmd, b.SetQueuePaused):
            if not cmd.paused:
                self.lot.wake((cmd.queue,))
        elif not self.shared and isinstance(cmd, _MAKES_READY):
            self.lot.wake_all()
            if isinstance(cmd, b.NackJobs):
                delays = [item.retry_in_s for item in cmd.items
                          if item.outcome == b.Outcome.RETRY and item.retry_in_s]
                if delays:  # the queues are not known: any wait may want them
                    self.lot.due_after(None, min(delays), mono)

    # -- results ----------------------------------------------------------------------

    def settle(self, batch: Batch[R], results: list[Any], mono: float) -> list[Effect[R]]:
        """The effects of the results of `batch`'s commands, one result per command.

        Raises:
            Exception: a result that is not an expected error (a bug in the backend).
        """
        effects: list[Effect[R]] = []
        for cmd, step, result in zip(batch.cmds, batch.steps, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, EXPECTED_ERRORS):
                raise result
            self._settle_one(cmd, step, result, mono, effects)
        return effects

    def _settle_one(self, cmd: Any, step: _Step[R], result: Any, mono: float,
                    effects: list[Effect[R]]) -> None:
        match step:
            case _Reply():
                effects.append(self._replied(cmd, step.request, result))
            case _Lease():
                self._leased(step.wait, result, mono, effects)
            case _Watch():
                effects.append(self._watched(step.request, step.msg, result))
            case _Refresh():
                self._refreshed(step.ids, result, effects)
            case _Cancels():
                if not isinstance(result, Exception):
                    effects += self._cancel_pushes(result.jobs)
            case _Quiet():
                pass
            case _:
                assert_never(step)

    def _replied(self, cmd: Any, request: R, result: Any) -> Effect[R]:
        if isinstance(result, Exception):
            return Refuse(request, result)
        if isinstance(result, Leased):
            result = self._cut(cmd, result.reply)
        else:
            try:
                result = fit_reply(result)
            except ReplyTooLarge as exc:
                return Refuse(request, exc)
        if not self.shared:
            self._note_done(cmd, result)
        return Answer(request, result)

    def _leased(self, wait: Wait[R], result: Any, mono: float,
                effects: list[Effect[R]]) -> None:
        if isinstance(result, Exception):
            effects.append(Refuse(wait.request, result))
            return
        leased = cast(Leased, result)
        reply = self._cut(wait.lease, leased.reply)
        if self.lot.leased(wait, reply, leased.now, leased.next_due, mono):
            if not self.shared:
                self._note_done(wait.lease, reply)
            effects.append(Answer(wait.request, reply))

    def _cut(self, lease: b.LeaseJobs, reply: b.LeaseReply) -> b.LeaseReply:
        kept, excess = cut_lease(reply)
        if excess:
            self._followups.append((b.ReleaseJobs(excess), _Quiet()))
            self.lot.wake(q.name for q in lease.queues)
        return kept

    def _note_done(self, cmd: Any, reply: Any) -> None:
        """Remember which watched jobs a command of this shell touched."""
        if self.book:
            self._touched.update(_touched_ids(cmd, reply))
        if isinstance(cmd, b.CancelJobs):
            self._followups.append((b.GetJobs(cmd.ids), _Cancels()))

    # -- events -----------------------------------------------------------------------

    def _take_events(self, events: StorageEvents, mono: float) -> list[Effect[R]]:
        lot = self.lot
        if events.resubscribed:
            lot.wake_all()
            self._touched.update(self.book.ids())
            return []
        if events.now is not None:
            lot.observe(events.now, mono)
        lot.wake(events.ready, math.inf if events.now is None else events.now)
        for queue, due_at in events.due:
            lot.due(queue, due_at, events.now)
        if self.book:
            self._touched.update(i for i in events.ids if i in self.book)
        mine = tuple(LeaseToken(job_id, attempt) for job_id, node, attempt in events.cancels
                     if node == self.node)
        return [Push(Address(self.node, WORKERS), CancelRunning(mine))] if mine else []

    def _cancel_pushes(self, jobs: Iterable[JobRecord | None]) -> list[Effect[R]]:
        return [Push(Address(job.lease_node, WORKERS), CancelRunning((job.token,)))
                for job in jobs
                if job is not None and job.cancel_requested and job.lease_node
                and job.state not in TERMINAL]

    # -- watchers ---------------------------------------------------------------------

    def _watched(self, request: R, msg: WatchJobs, result: Any) -> Effect[R]:
        if not isinstance(result, Exception):
            try:
                check_records(result.jobs)
            except ReplyTooLarge as exc:
                result = exc
        if isinstance(result, Exception):
            self._unwatch(msg.ids, msg.watcher)
            return Refuse(request, result)
        for job_id, job in zip(msg.ids, result.jobs, strict=True):
            if job is None or job.state in TERMINAL:
                self._unwatch((job_id,), msg.watcher)
            elif job_id not in self._pushed:  # later watchers may have seen newer records
                self._pushed[job_id] = job
        return Answer(request, result)

    def _refreshed(self, ids: tuple[str, ...], result: Any, effects: list[Effect[R]]) -> None:
        if isinstance(result, Exception):
            self._touched.update(ids)  # look again with the next batch
            return
        for job_id, job in zip(ids, result.jobs, strict=True):
            effects += self._changed(job_id, job)

    def _changed(self, job_id: str, job: JobRecord | None) -> list[Effect[R]]:
        """Pushes of a watched job's record (not again what its watchers all saw)."""
        if job is None or job.state in TERMINAL:
            subs = self.book.settle(job_id)
            self._pushed.pop(job_id, None)
        elif self._pushed.get(job_id) == job:
            return []
        else:
            subs = self.book.watchers(job_id)
            self._pushed[job_id] = job
        if job is None:
            return []
        return [Push(watcher, JobChanged(job), job_id) for watcher in subs]

    def lost(self, push: Push) -> None:
        """`push` could not be sent: its watcher cannot keep up or went away."""
        if push.job_id is not None:
            self._unwatch((push.job_id,), push.dst)

    def _unwatch(self, ids: Iterable[str], watcher: Address) -> None:
        for job_id in self.book.unwatch(ids, watcher):
            self._pushed.pop(job_id, None)

    # -- the shell's loop -------------------------------------------------------------

    def busy(self) -> bool:
        """True if a batch is to be planned at once, with nothing arrived."""
        return bool(self._followups) or any(i in self.book for i in self._touched)

    def next_wakeup(self) -> float:
        """When to plan a batch even if nothing arrives (local time; -inf: now)."""
        return -math.inf if self.busy() else self.lot.next_wakeup()


def _inbox_message(msg: object) -> StorageInbox:
    if not isinstance(msg, _INBOX_TYPES):
        raise TypeError(f"not a storage command: {type(msg).__name__}")
    return cast(StorageInbox, msg)


def _touched_ids(cmd: Any, reply: Any) -> Iterable[str]:
    if isinstance(cmd, b.AckJobs | b.NackJobs | b.ReportProgress):
        return (item.job_id for item in cmd.items)
    if isinstance(cmd, b.ReleaseJobs):
        return (token.job_id for token in cmd.tokens)
    if isinstance(cmd, b.CancelJobs):
        return cmd.ids
    if isinstance(reply, b.LeaseReply):
        return (job.id for job in reply.jobs)
    if isinstance(reply, b.RequeueExpiredReply):
        return (*reply.requeued, *reply.dead, *reply.cancelled)
    if isinstance(reply, b.EnqueueReply):
        return reply.ids
    return ()
