"""The memory storage backend: a pure, synchronous implementation of the storage contract.

Rules of the memory backend (this module and the `_memory_*` modules it is split into):
- `MemoryStorageCore.handle(cmd, now)` is the whole interface. It does no IO, reads no
  clock and draws no random number: the storage clock arrives as `now` (seconds). An
  actor shell owns one core and feeds it the commands drained from its inbox.
- Every state change goes through `_move`, which checks `TRANSITIONS` and keeps the
  per-queue counts; a job moves along no other edge.
- Indexes are heaps with lazy deletion: an entry is checked against its job when it
  reaches the top, and a heap is rebuilt from its live entries when it grows past twice
  its live size (plus slack), so stale entries cost amortised O(1) and memory stays
  proportional to the live jobs.
  - ready, one per queue: `(-priority, due_at, seq, id)`, live while the job is queued;
  - by due, one per queue: `(due_at, seq, id)`, live while the job is queued with that
    due time (its head is the queue's oldest ready job, for `QueueInfo`);
  - due: `(due_at, seq, id)`, live while the job is scheduled with that due time;
  - leases: `(lease_expires_at, id, attempt)`, live while that lease is current; a
    heartbeat that extends a lease leaves the entry, which is pushed again when reached;
  - expiry: `(expires_at, id)` for finished jobs awaiting purge.
- Bounded: at most `jobs_max` jobs and `nodes_max` nodes; beyond is `StorageFull`. An
  enqueue that would take the bytes held past `bytes_max` (default `BYTES_MAX`, 1 GiB)
  is `StorageFull` too. A job counts `JOB_BYTES_OVERHEAD` plus its arguments, result,
  error, traceback and progress message; results and errors of jobs already running are
  still stored (each is capped by the worker), so the bound is checked at admission.

The core is one class built over four modules: `_memory_state` (records, indexes, the
state and `_move`), `_memory_maintenance` (cancellation, expired leases, purges, the
DLQ), `_memory_queries` (reads and the node registry) and this one (the interface,
enqueue and lease, the running attempt).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from heapq import heappop
from typing import Protocol, TypeVar, cast

from gotask._errors import StorageFull
from gotask._job import AttemptOutcome, JobRecord, LeaseToken, NewJob, attempt_error

from . import base as b
from ._core_dispatch import dispatch
from ._fairness import swrr
from ._memory_cron import _MemoryCron
from ._memory_maintenance import _MemoryMaintenance
from ._memory_queries import _MemoryQueries
from ._memory_state import (
    _PLAIN,
    ACTIVE,
    CANCEL,
    CANCELLED,
    DEAD,
    DUPLICATE,
    JOB_BYTES_OVERHEAD,
    MISSING,
    OK,
    QUEUED,
    SCHEDULED,
    STALE,
    SUCCEEDED,
    _evolve,
    _Job,
    _new_job,
    ended,
)
from .base import Command, NackItem, StorageCommand

__all__ = ["MemoryStorageCore"]

_UNLIMITED = sys.maxsize
_SUCCEEDED, _FAILED = AttemptOutcome.SUCCEEDED.value, AttemptOutcome.FAILED.value
_CANCELLED, _RELEASED = AttemptOutcome.CANCELLED.value, AttemptOutcome.RELEASED.value

R = TypeVar("R")


class _Token(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...


T = TypeVar("T", bound=_Token)


def _fence(job: _Job | None, attempt: int) -> str:
    """Judge a lease token: OK when current, DUPLICATE when already settled."""
    if job is None:
        return STALE
    if job.state is ACTIVE and job.rec.attempt == attempt:
        return OK
    if attempt and job.rec.settled_attempt == attempt:
        return DUPLICATE
    return STALE


class MemoryStorageCore(_MemoryQueries, _MemoryMaintenance, _MemoryCron):
    """The memory backend's state and the storage contract over it.

    Args:
        jobs_max: most jobs held at once (finished ones count until purged).
        bytes_max: most bytes of job data held before an enqueue is refused.
        nodes_max: most registered nodes, and most nodes whose fairness state is kept.
        accept_stale_acks: TEST-ONLY planted bug, never set outside the simulation's
            self-test: an ack of a stale token is accepted while the job is active (the
            fencing checks the state but not the attempt).
        fire_without_cas: TEST-ONLY planted bug, likewise: `CronFire` ignores its
            `expected` last fired tick (no compare-and-set), so racing nodes fire one
            tick more than once.
    """

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply one command at storage time `now` (seconds) and return its reply.

        Raises:
            TypeError: `cmd` is not a storage command.
            StorageFull: enqueue past `jobs_max` or `bytes_max`, or registering past
                `nodes_max`.
        """
        return cast(R, dispatch(self, cast(StorageCommand, cmd), now))

    def next_due(self) -> float | None:
        """The earliest due time of a scheduled job (storage time), None if none is."""
        items = self._due.items
        while items and not self._due_live(items[0]):
            heappop(items)
        return items[0][0] if items else None


    # -- enqueue and lease -------------------------------------------------------------

    def _enqueue(self, cmd: b.EnqueueJobs, now: float) -> b.EnqueueReply:
        if len(self._jobs) + len(cmd.jobs) > self.jobs_max:
            raise StorageFull(f"memory storage holds {len(self._jobs)} jobs; "
                              f"{len(cmd.jobs)} more would pass jobs_max={self.jobs_max}")
        incoming = sum(JOB_BYTES_OVERHEAD + len(new.args) for new in cmd.jobs)
        if self.bytes_held + incoming > self.bytes_max:
            raise StorageFull(f"memory storage holds {self.bytes_held} bytes of jobs; "
                              f"{incoming} more would pass bytes_max={self.bytes_max}")
        ids: list[str] = []
        created: list[bool] = []
        for new in cmd.jobs:
            key = new.idempotency_key
            known = self._keys.get(key) if key is not None else None
            if known is None and new.id in self._jobs:
                known = new.id
            ids.append(known if known is not None else self._insert(new, now))
            created.append(known is None)
        return b.EnqueueReply(tuple(ids), tuple(created))

    def _insert(self, new: NewJob, now: float) -> str:
        self._seq += 1
        job = _new_job(new, now, self._seq)
        rec = job.rec
        self._jobs[rec.id] = job
        self._resize(job)
        if rec.idempotency_key is not None:
            self._keys[rec.idempotency_key] = rec.id
        queue = self._queue(rec.queue)
        queue.counts[job.state] += 1
        if self._order and rec.id < self._order[-1]:
            self._order_sorted = False
        self._order.append(rec.id)
        if job.state is SCHEDULED:
            self._due.push((rec.due_at, job.seq, rec.id))
        else:
            queue.ready.push((-rec.priority, rec.due_at, job.seq, rec.id))
            queue.by_due.push((rec.due_at, job.seq, rec.id))
        return rec.id

    def _promote(self, now: float, limit: int) -> int:
        """Queue up to `limit` due scheduled jobs, earliest due first."""
        items, jobs, promoted = self._due.items, self._jobs, 0
        while items and promoted < limit and items[0][0] <= now:
            due_at, _, job_id = heappop(items)
            job = jobs.get(job_id)
            if job is not None and job.state is SCHEDULED and job.rec.due_at == due_at:
                self._make_ready(job)
                promoted += 1
        return promoted

    def _lease(self, cmd: b.LeaseJobs, now: float) -> b.LeaseReply:
        self._promote(now, _UNLIMITED)
        paused = self._paused_queues
        live = [q for q in cmd.queues if q.name not in paused and self._has_ready(q.name)]
        credit = self._fair.of(cmd.node)
        bound = sum(q.weight for q in cmd.queues)
        leased: list[JobRecord] = []
        while live and len(leased) < cmd.limit:
            if len(live) == 1:
                self._take(live[0].name, cmd.limit - len(leased), cmd, now, leased)
                break
            queue = swrr(live, credit, bound)
            self._take(queue.name, 1, cmd, now, leased)
            if not self._has_ready(queue.name):
                live.remove(queue)
        return b.LeaseReply(tuple(leased))

    def _take(
        self, name: str, count: int, cmd: b.LeaseJobs, now: float, leased: list[JobRecord]
    ) -> None:
        """Lease up to `count` ready jobs of one queue in order; append their records."""
        pop, jobs, leases = self._queues[name].ready.pop, self._jobs, self._leases
        active = _PLAIN[ACTIVE]
        expires_at, node = now + cmd.lease_timeout_s, cmd.node
        while count and (entry := pop()) is not None:
            job = jobs.get(entry[3])
            if job is None or job.state is not QUEUED:
                continue
            self._move(job, ACTIVE)
            rec = job.rec = _evolve(job.rec, state=active, attempt=job.rec.attempt + 1,
                                    leased_at=now, lease_expires_at=expires_at, lease_node=node)
            leases.push((expires_at, rec.id, rec.attempt))
            leased.append(rec)
            count -= 1

    def _has_ready(self, name: str) -> bool:
        """Drop stale entries off the head of a queue; True if a job is ready."""
        queue = self._queues.get(name)
        if queue is None:
            return False
        ready, jobs = queue.ready, self._jobs
        while (entry := ready.peek()) is not None:
            job = jobs.get(entry[3])
            if job is not None and job.state is QUEUED:
                return True
            ready.pop()
        return False

    # -- the running attempt ---------------------------------------------------------

    def _heartbeat(self, cmd: b.Heartbeat, now: float) -> b.HeartbeatReply:
        expires_at = now + cmd.lease_timeout_s
        jobs = self._jobs
        statuses: list[str] = []
        for token in cmd.tokens:
            job = jobs.get(token.job_id)
            if job is None or job.state is not ACTIVE or job.rec.attempt != token.attempt:
                statuses.append(STALE)
                continue
            if job.rec.lease_expires_at is None or expires_at < job.rec.lease_expires_at:
                # The heap entry is later than the new expiry; add the earlier one.
                self._leases.push((expires_at, job.rec.id, job.rec.attempt))
            job.rec = (_evolve(job.rec, lease_expires_at=expires_at, started_attempt=token.attempt)
                       if cmd.started else _evolve(job.rec, lease_expires_at=expires_at))
            statuses.append(CANCEL if job.rec.cancel_requested else OK)
        return b.HeartbeatReply(tuple(statuses), expires_at)

    def _ack(self, cmd: b.AckJobs, now: float) -> b.AckReply:
        jobs = self._jobs
        statuses: list[str] = []
        for item in cmd.items:
            job = jobs.get(item.job_id)
            status = _fence(job, item.attempt)
            if status is STALE and self.accept_stale_acks and job and job.state is ACTIVE:
                status = OK
            if status is OK:
                assert job is not None
                self._finish(job, SUCCEEDED, now, settled_attempt=item.attempt,
                             result=item.result, progress=1.0, error_type=None, error=None,
                             traceback=None, **ended(job.rec, now, _SUCCEEDED))
            statuses.append(status)
        return b.AckReply(tuple(statuses))

    def _nack(self, cmd: b.NackJobs, now: float) -> b.NackReply:
        def fail(job: _Job, item: NackItem) -> None:
            self._fail(job, item, now)

        return b.NackReply(*self._each_current(cmd.items, fail))

    def _fail(self, job: _Job, item: NackItem, now: float) -> None:
        cancel = item.outcome == b.Outcome.CANCELLED or (
            item.outcome == b.Outcome.RETRY and job.rec.cancel_requested)
        outcome = _CANCELLED if cancel else _FAILED
        job.rec = _evolve(job.rec, settled_attempt=item.attempt, error_type=item.error_type,
                          error=item.error, traceback=item.traceback, lease_expires_at=None,
                          **ended(job.rec, now, outcome,
                                  attempt_error(item.error_type, item.error)))
        self._resize(job)
        if cancel:
            self._finish(job, CANCELLED, now)
        elif item.outcome == b.Outcome.DEAD or job.exhausted():
            self._finish(job, DEAD, now)
        else:
            self._schedule(job, now + (item.retry_in_s or 0.0))

    def _release(self, cmd: b.ReleaseJobs, now: float) -> b.ReleaseReply:
        def give_back(job: _Job, _token: LeaseToken) -> None:
            job.rec = _evolve(job.rec, releases=job.rec.releases + 1,
                              **ended(job.rec, now, _RELEASED))
            self._requeue(job, now)

        return b.ReleaseReply(*self._each_current(cmd.tokens, give_back))

    def _each_current(
        self, items: Iterable[T], apply: Callable[[_Job, T], None]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Apply `apply` to each job whose token is current; return per item its fencing
        status and the job's state after."""
        statuses: list[str] = []
        states: list[str] = []
        for item in items:
            job = self._jobs.get(item.job_id)
            status = _fence(job, item.attempt)
            if status is OK:
                assert job is not None
                apply(job, item)
            statuses.append(status)
            states.append(_PLAIN[job.state] if job is not None else MISSING)
        return tuple(statuses), tuple(states)

    def _progress(self, cmd: b.ReportProgress) -> b.ProgressReply:
        accepted: list[bool] = []
        for item in cmd.items:
            job = self._jobs.get(item.job_id)
            ok = job is not None and job.state is ACTIVE and job.rec.attempt == item.attempt
            if ok:
                assert job is not None
                job.rec = _evolve(job.rec, progress=item.fraction,
                                  progress_message=item.message)
                self._resize(job)
            accepted.append(ok)
        return b.ProgressReply(tuple(accepted))
