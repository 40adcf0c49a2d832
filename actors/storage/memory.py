"""The memory storage backend: a pure, synchronous implementation of the storage contract.

Rules of this module:
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
  - due: `(due_at, seq, id)`, live while the job is scheduled with that due time;
  - leases: `(lease_expires_at, id, attempt)`, live while that lease is current; a
    heartbeat that extends a lease leaves the entry, which is pushed again when reached;
  - expiry: `(expires_at, id)` for finished jobs awaiting purge.
- Bounded: at most `jobs_max` jobs and `nodes_max` nodes; beyond is `StorageFull`.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any, Generic, Never, NoReturn, TypeVar, cast

import attrs

from gotask._errors import StorageFull
from gotask._job import TERMINAL, TRANSITIONS, JobRecord, JobState, NewJob, check_transition

from . import base as b
from .base import Command, NackItem, QueueWeight, Status, StorageCommand, StorageReply

__all__ = ["MemoryStorageCore"]

SCHEDULED, QUEUED, ACTIVE = JobState.SCHEDULED, JobState.QUEUED, JobState.ACTIVE
SUCCEEDED, DEAD, CANCELLED = JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED
OK: str = Status.OK.value
STALE: str = Status.STALE.value
DUPLICATE: str = Status.DUPLICATE.value
CANCEL: str = Status.CANCEL.value
MISSING: str = Status.MISSING.value
_PLAIN: dict[JobState, str] = {state: state.value for state in JobState}
_HEAP_SLACK = 1024
_UNLIMITED = sys.maxsize

R = TypeVar("R")
E = TypeVar("E", bound=tuple[Any, ...])


@attrs.define(eq=False)
class _Heap(Generic[E]):
    """A min-heap whose stale entries are dropped when it outgrows its live size."""

    valid: Callable[[E], bool]
    items: list[E] = attrs.Factory(list)
    high: int = _HEAP_SLACK

    def push(self, entry: E) -> None:
        heappush(self.items, entry)
        if len(self.items) > self.high:
            self.items[:] = [e for e in self.items if self.valid(e)]
            heapify(self.items)
            self.high = 2 * len(self.items) + _HEAP_SLACK


_Entry = tuple[int, float, int, str]


@attrs.define(eq=False)
class _Ready:
    """A queue's ready entries `(-priority, due_at, seq, id)` in order.

    Entries that arrive in order (the common case: one priority, immediate jobs) are
    appended to a FIFO; the others (a higher priority, a released job keeping its place)
    go to a heap. The head is the smaller of the two heads, so a pop is O(1) when
    arrivals are in order. Stale entries are dropped like `_Heap`'s.
    """

    valid: Callable[[_Entry], bool]
    fifo: deque[_Entry] = attrs.Factory(deque)
    heap: list[_Entry] = attrs.Factory(list)
    high: int = _HEAP_SLACK

    def push(self, entry: _Entry) -> None:
        if not self.fifo or entry >= self.fifo[-1]:
            self.fifo.append(entry)
        else:
            heappush(self.heap, entry)
        if len(self.fifo) + len(self.heap) > self.high:
            self.fifo = deque(e for e in self.fifo if self.valid(e))
            self.heap[:] = [e for e in self.heap if self.valid(e)]
            heapify(self.heap)
            self.high = 2 * (len(self.fifo) + len(self.heap)) + _HEAP_SLACK

    def peek(self) -> _Entry | None:
        fifo, heap = self.fifo, self.heap
        if heap and (not fifo or heap[0] < fifo[0]):
            return heap[0]
        return fifo[0] if fifo else None

    def pop(self) -> _Entry | None:
        fifo, heap = self.fifo, self.heap
        if heap and (not fifo or heap[0] < fifo[0]):
            return heappop(heap)
        return fifo.popleft() if fifo else None


@attrs.define(eq=False)
class _Queue:
    """One queue: its ready entries and how many of its jobs are in each state."""

    ready: _Ready
    counts: dict[JobState, int] = attrs.Factory(lambda: dict.fromkeys(JobState, 0))


@attrs.define(eq=False)
class _Node:
    info: dict[str, Any]
    first_seen: float
    last_seen: float
    expires_at: float


@attrs.define(eq=False)
class _Job:
    """The mutable twin of `JobRecord`, plus `seq` (enqueue order)."""

    id: str
    task: str
    queue: str
    args: bytes
    priority: int
    state: JobState
    created_at: float
    due_at: float
    max_attempts: int
    result_ttl_s: float
    timeout_s: float | None
    idempotency_key: str | None
    seq: int
    attempt: int = 0
    releases: int = 0
    attempt_base: int = 0
    settled_attempt: int = 0
    leased_at: float | None = None
    finished_at: float | None = None
    lease_expires_at: float | None = None
    lease_node: str | None = None
    result: bytes | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    progress: float = 0.0
    progress_message: str = ""
    cancel_requested: bool = False
    expires_at: float | None = None

    def exhausted(self) -> bool:
        return self.attempt - self.releases - self.attempt_base >= self.max_attempts

    def record(self) -> JobRecord:
        # Positional: keyword passing of 28 arguments costs twice as much (lease hot path).
        return JobRecord(
            self.id, self.task, self.queue, self.args, self.priority, _PLAIN[self.state],
            self.created_at, self.due_at, self.max_attempts, self.result_ttl_s, self.attempt,
            self.releases, self.attempt_base, self.settled_attempt, self.leased_at,
            self.finished_at, self.lease_expires_at, self.lease_node, self.timeout_s,
            self.result, self.error_type, self.error, self.traceback, self.progress,
            self.progress_message, self.idempotency_key, self.cancel_requested,
            self.expires_at,
        )  # fmt: skip


def _new_job(new: NewJob, now: float, seq: int) -> _Job:
    return _Job(
        id=new.id, task=new.task, queue=new.queue, args=new.args, priority=new.priority,
        state=SCHEDULED if new.delay_s > 0 else QUEUED, created_at=now,
        due_at=now + new.delay_s, max_attempts=new.max_attempts,
        result_ttl_s=new.result_ttl_s, timeout_s=new.timeout_s,
        idempotency_key=new.idempotency_key, seq=seq,
    )  # fmt: skip


def _fence(job: _Job | None, attempt: int) -> str:
    """Judge a lease token: OK when current, DUPLICATE when already settled."""
    if job is None:
        return STALE
    if job.state is ACTIVE and job.attempt == attempt:
        return OK
    if attempt and job.settled_attempt == attempt:
        return DUPLICATE
    return STALE


def _swrr(live: list[QueueWeight], credit: dict[str, int], bound: int) -> QueueWeight:
    """Smooth weighted round robin: pick a queue and charge it the round's total weight.

    Credits are clamped to [-bound, bound] so they stay small however the set of
    queues with ready jobs changes between picks.
    """
    best, best_credit, total = live[0], -_UNLIMITED, 0
    for queue in live:
        value = min(credit.get(queue.name, 0) + queue.weight, bound)
        credit[queue.name] = value
        total += queue.weight
        if value > best_credit:
            best, best_credit = queue, value
    credit[best.name] = max(best_credit - total, -bound)
    return best


def _unknown(cmd: Never) -> NoReturn:
    raise TypeError(f"not a storage command: {type(cmd).__name__}")


class MemoryStorageCore:
    """The memory backend's state and the storage contract over it.

    Args:
        jobs_max: most jobs held at once (finished ones count until purged).
        nodes_max: most registered nodes, and most nodes whose fairness state is kept.
        accept_stale_acks: TEST-ONLY planted bug, never set outside the simulation's
            self-test: an ack of a stale token is accepted while the job is active (the
            fencing checks the state but not the attempt).
    """

    def __init__(
        self, jobs_max: int = 10_000_000, nodes_max: int = 10_000, *,
        accept_stale_acks: bool = False,
    ) -> None:
        self.jobs_max = jobs_max
        self.nodes_max = nodes_max
        self.accept_stale_acks = accept_stale_acks
        self._jobs: dict[str, _Job] = {}
        self._keys: dict[str, str] = {}
        self._queues: dict[str, _Queue] = {}
        self._due: _Heap[tuple[float, int, str]] = _Heap(self._due_live)
        self._leases: _Heap[tuple[float, str, int]] = _Heap(self._lease_live)
        self._expiry: _Heap[tuple[float, str]] = _Heap(self._expiry_live)
        self._dead: dict[str, None] = {}
        self._order: list[str] = []
        self._order_sorted = True
        self._gone = 0
        self._fair: dict[str, dict[str, int]] = {}
        self._nodes: dict[str, _Node] = {}
        self._seq = 0

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply one command at storage time `now` (seconds) and return its reply.

        Raises:
            TypeError: `cmd` is not a storage command.
            StorageFull: enqueue past `jobs_max`, or registering past `nodes_max`.
        """
        return cast(R, self._dispatch(cast(StorageCommand, cmd), now))

    def _dispatch(self, cmd: StorageCommand, now: float) -> StorageReply:
        match cmd:
            case b.LeaseJobs():
                return self._lease(cmd, now)
            case b.AckJobs():
                return self._ack(cmd, now)
            case b.Heartbeat():
                return self._heartbeat(cmd, now)
            case b.EnqueueJobs():
                return self._enqueue(cmd, now)
            case b.NackJobs():
                return self._nack(cmd, now)
            case b.ReportProgress():
                return self._progress(cmd)
            case b.ReleaseJobs():
                return self._release(cmd, now)
            case b.CancelJobs():
                return b.CancelReply(tuple(self._cancel(job_id, now) for job_id in cmd.ids))
            case b.GetJobs():
                return b.GetJobsReply(tuple(self._get(job_id) for job_id in cmd.ids))
            case b.ListJobs():
                return b.ListJobsReply(*self._list(cmd.queue, cmd.state, cmd.limit, cmd.after_id))
            case b.CountJobs():
                return b.CountJobsReply(self._counts())
            case b.RequeueExpired():
                return self._requeue_expired(cmd.limit, now)
            case b.PromoteDue():
                return b.PromoteDueReply(self._promote(now, cmd.limit))
            case b.PurgeExpired():
                return b.PurgeExpiredReply(self._purge_expired(cmd.limit, now))
            case b.ListDead():
                return b.ListDeadReply(*self._list_dead(cmd.queue, cmd.limit, cmd.after_id))
            case b.RetryDead():
                return b.RetryDeadReply(self._retry_dead(cmd.ids, now))
            case b.PurgeDead():
                return b.PurgeDeadReply(self._purge_dead(cmd.ids))
            case b.RegisterNode():
                return b.RegisterNodeReply(self._register(cmd, now))
            case b.ListNodes():
                return b.ListNodesReply(self._live_nodes(now))
            case b.ExpireNodes():
                return b.ExpireNodesReply(self._expire_nodes(now))
            case _:
                _unknown(cmd)

    # -- moving jobs -------------------------------------------------------------------

    def _move(self, job: _Job, new: JobState) -> None:
        old = job.state
        if new not in TRANSITIONS[old]:
            check_transition(old, new, job.id)
        counts = self._queues[job.queue].counts
        counts[old] -= 1
        counts[new] += 1
        job.state = new

    def _make_ready(self, job: _Job) -> None:
        """Queue a job in its place: (priority, due time, enqueue order)."""
        self._move(job, QUEUED)
        self._queue(job.queue).ready.push((-job.priority, job.due_at, job.seq, job.id))

    def _schedule(self, job: _Job, due_at: float) -> None:
        self._move(job, SCHEDULED)
        job.due_at = due_at
        self._due.push((due_at, job.seq, job.id))

    def _finish(self, job: _Job, state: JobState, now: float) -> None:
        """Move to a terminal state; dead jobs wait in the DLQ, others expire."""
        self._move(job, state)
        job.finished_at = now
        job.lease_expires_at = None
        if state is DEAD:
            job.expires_at = None
            self._dead[job.id] = None
        else:
            job.expires_at = now + job.result_ttl_s
            self._expiry.push((job.expires_at, job.id))

    def _requeue(self, job: _Job, now: float) -> None:
        """Hand a job back (release, lease expiry): queued in its old place, unless
        cancellation was requested."""
        job.lease_expires_at = None
        if job.cancel_requested:
            self._finish(job, CANCELLED, now)
        else:
            self._make_ready(job)

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(_Ready(self._ready_live))
        return queue

    def _ready_live(self, entry: _Entry) -> bool:
        job = self._jobs.get(entry[3])
        return job is not None and job.state is QUEUED

    def _due_live(self, entry: tuple[float, int, str]) -> bool:
        job = self._jobs.get(entry[2])
        return job is not None and job.state is SCHEDULED and job.due_at == entry[0]

    def _lease_live(self, entry: tuple[float, str, int]) -> bool:
        job = self._jobs.get(entry[1])
        return job is not None and job.state is ACTIVE and job.attempt == entry[2]

    def _expiry_live(self, entry: tuple[float, str]) -> bool:
        job = self._jobs.get(entry[1])
        return job is not None and job.expires_at == entry[0]

    # -- enqueue and lease -------------------------------------------------------------

    def _enqueue(self, cmd: b.EnqueueJobs, now: float) -> b.EnqueueReply:
        if len(self._jobs) + len(cmd.jobs) > self.jobs_max:
            raise StorageFull(f"memory storage holds {len(self._jobs)} jobs; "
                              f"{len(cmd.jobs)} more would pass jobs_max={self.jobs_max}")
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
        self._jobs[job.id] = job
        if job.idempotency_key is not None:
            self._keys[job.idempotency_key] = job.id
        queue = self._queue(job.queue)
        queue.counts[job.state] += 1
        if self._order and job.id < self._order[-1]:
            self._order_sorted = False
        self._order.append(job.id)
        if job.state is SCHEDULED:
            self._due.push((job.due_at, job.seq, job.id))
        else:
            queue.ready.push((-job.priority, job.due_at, job.seq, job.id))
        return job.id

    def _promote(self, now: float, limit: int) -> int:
        """Queue up to `limit` due scheduled jobs, earliest due first."""
        items, jobs, promoted = self._due.items, self._jobs, 0
        while items and promoted < limit and items[0][0] <= now:
            due_at, _, job_id = heappop(items)
            job = jobs.get(job_id)
            if job is not None and job.state is SCHEDULED and job.due_at == due_at:
                self._make_ready(job)
                promoted += 1
        return promoted

    def _lease(self, cmd: b.LeaseJobs, now: float) -> b.LeaseReply:
        self._promote(now, _UNLIMITED)
        live = [q for q in cmd.queues if self._has_ready(q.name)]
        credit = self._credit(cmd.node)
        bound = sum(q.weight for q in cmd.queues)
        leased: list[JobRecord] = []
        while live and len(leased) < cmd.limit:
            if len(live) == 1:
                self._take(live[0].name, cmd.limit - len(leased), cmd, now, leased)
                break
            queue = _swrr(live, credit, bound)
            self._take(queue.name, 1, cmd, now, leased)
            if not self._has_ready(queue.name):
                live.remove(queue)
        return b.LeaseReply(tuple(leased))

    def _take(
        self, name: str, count: int, cmd: b.LeaseJobs, now: float, leased: list[JobRecord]
    ) -> None:
        """Lease up to `count` ready jobs of one queue in order; append their records."""
        pop, jobs, leases = self._queues[name].ready.pop, self._jobs, self._leases
        expires_at, node = now + cmd.lease_timeout_s, cmd.node
        while count and (entry := pop()) is not None:
            job = jobs.get(entry[3])
            if job is None or job.state is not QUEUED:
                continue
            self._move(job, ACTIVE)
            job.attempt += 1
            job.leased_at, job.lease_expires_at, job.lease_node = now, expires_at, node
            leases.push((expires_at, job.id, job.attempt))
            leased.append(job.record())
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

    def _credit(self, node: str) -> dict[str, int]:
        credit = self._fair.get(node)
        if credit is None:
            if len(self._fair) >= self.nodes_max:
                del self._fair[next(iter(self._fair))]
            credit = self._fair[node] = {}
        return credit

    # -- the running attempt ---------------------------------------------------------

    def _heartbeat(self, cmd: b.Heartbeat, now: float) -> b.HeartbeatReply:
        expires_at = now + cmd.lease_timeout_s
        jobs = self._jobs
        statuses: list[str] = []
        for token in cmd.tokens:
            job = jobs.get(token.job_id)
            if job is None or job.state is not ACTIVE or job.attempt != token.attempt:
                statuses.append(STALE)
                continue
            if job.lease_expires_at is None or expires_at < job.lease_expires_at:
                # The heap entry is later than the new expiry; add the earlier one.
                self._leases.push((expires_at, job.id, job.attempt))
            job.lease_expires_at = expires_at
            statuses.append(CANCEL if job.cancel_requested else OK)
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
                job.settled_attempt = item.attempt
                job.result = item.result
                job.progress = 1.0
                self._finish(job, SUCCEEDED, now)
            statuses.append(status)
        return b.AckReply(tuple(statuses))

    def _nack(self, cmd: b.NackJobs, now: float) -> b.NackReply:
        statuses: list[str] = []
        states: list[str] = []
        for item in cmd.items:
            job = self._jobs.get(item.job_id)
            status = _fence(job, item.attempt)
            if status is OK:
                assert job is not None
                self._fail(job, item, now)
            statuses.append(status)
            states.append(_PLAIN[job.state] if job is not None else MISSING)
        return b.NackReply(tuple(statuses), tuple(states))

    def _fail(self, job: _Job, item: NackItem, now: float) -> None:
        job.settled_attempt = item.attempt
        job.error_type, job.error, job.traceback = item.error_type, item.error, item.traceback
        job.lease_expires_at = None
        if item.outcome == b.Outcome.CANCELLED or (
            item.outcome == b.Outcome.RETRY and job.cancel_requested
        ):
            self._finish(job, CANCELLED, now)
        elif item.outcome == b.Outcome.DEAD or job.exhausted():
            self._finish(job, DEAD, now)
        else:
            self._schedule(job, now + (item.retry_in_s or 0.0))

    def _release(self, cmd: b.ReleaseJobs, now: float) -> b.ReleaseReply:
        statuses: list[str] = []
        states: list[str] = []
        for token in cmd.tokens:
            job = self._jobs.get(token.job_id)
            status = _fence(job, token.attempt)
            if status is OK:
                assert job is not None
                job.releases += 1
                self._requeue(job, now)
            statuses.append(status)
            states.append(_PLAIN[job.state] if job is not None else MISSING)
        return b.ReleaseReply(tuple(statuses), tuple(states))

    def _progress(self, cmd: b.ReportProgress) -> b.ProgressReply:
        accepted: list[bool] = []
        for item in cmd.items:
            job = self._jobs.get(item.job_id)
            ok = job is not None and job.state is ACTIVE and job.attempt == item.attempt
            if ok:
                assert job is not None
                job.progress, job.progress_message = item.fraction, item.message
            accepted.append(ok)
        return b.ProgressReply(tuple(accepted))

    # -- control and maintenance -----------------------------------------------------

    def _cancel(self, job_id: str, now: float) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            return MISSING
        if job.state is QUEUED or job.state is SCHEDULED:
            self._finish(job, CANCELLED, now)
        elif job.state is ACTIVE:
            job.cancel_requested = True
        return _PLAIN[job.state]

    def _requeue_expired(self, limit: int, now: float) -> b.RequeueExpiredReply:
        items, jobs = self._leases.items, self._jobs
        moved: dict[JobState, list[str]] = {QUEUED: [], DEAD: [], CANCELLED: []}
        handled = 0
        while items and handled < limit and items[0][0] <= now:
            _, job_id, attempt = heappop(items)
            job = jobs.get(job_id)
            if job is None or job.state is not ACTIVE or job.attempt != attempt:
                continue
            assert job.lease_expires_at is not None
            if job.lease_expires_at > now:
                heappush(items, (job.lease_expires_at, job_id, attempt))
                continue
            self._expire_lease(job, now)
            moved[job.state].append(job_id)
            handled += 1
        return b.RequeueExpiredReply(
            tuple(moved[QUEUED]), tuple(moved[DEAD]), tuple(moved[CANCELLED])
        )

    def _expire_lease(self, job: _Job, now: float) -> None:
        job.error_type = "LeaseExpired"
        job.error = f"lease of attempt {job.attempt} on node {job.lease_node!r} expired"
        job.traceback = None
        if job.exhausted() and not job.cancel_requested:
            self._finish(job, DEAD, now)
        else:
            self._requeue(job, now)

    def _purge_expired(self, limit: int, now: float) -> int:
        items, jobs, purged = self._expiry.items, self._jobs, 0
        while items and purged < limit and items[0][0] <= now:
            expires_at, job_id = heappop(items)
            job = jobs.get(job_id)
            if job is not None and job.expires_at == expires_at and job.state in TERMINAL:
                self._remove(job)
                purged += 1
        return purged

    def _remove(self, job: _Job) -> None:
        del self._jobs[job.id]
        key = job.idempotency_key
        if key is not None and self._keys.get(key) == job.id:
            del self._keys[key]
        self._dead.pop(job.id, None)
        counts = self._queues[job.queue].counts
        counts[job.state] -= 1
        if not any(counts.values()):
            del self._queues[job.queue]
        self._gone += 1

    def _retry_dead(self, ids: tuple[str, ...] | None, now: float) -> int:
        revived = 0
        for job_id in list(self._dead) if ids is None else ids:
            job = self._jobs.get(job_id)
            if job is None or job.state is not DEAD:
                continue
            del self._dead[job_id]
            job.attempt_base = job.attempt - job.releases
            job.due_at = now
            job.finished_at = job.expires_at = None
            job.cancel_requested = False
            self._make_ready(job)
            revived += 1
        return revived

    def _purge_dead(self, ids: tuple[str, ...] | None) -> int:
        purged = 0
        for job_id in list(self._dead) if ids is None else ids:
            job = self._jobs.get(job_id)
            if job is not None and job.state is DEAD:
                self._remove(job)
                purged += 1
        return purged

    # -- queries -----------------------------------------------------------------------

    def _get(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        return job.record() if job is not None else None

    def _counts(self) -> tuple[b.QueueCount, ...]:
        return tuple(
            b.QueueCount(name, _PLAIN[state], count)
            for name in sorted(self._queues)
            for state, count in sorted(self._queues[name].counts.items())
            if count
        )

    def _sorted_ids(self) -> list[str]:
        """All ids in order (possibly with purged or repeated ones), compacted lazily."""
        if self._gone > len(self._order) // 2:
            self._order = sorted(self._jobs)
            self._gone = 0
        elif not self._order_sorted:
            self._order.sort()
        self._order_sorted = True
        return self._order

    def _list(
        self, queue: str | None, state: str | None, limit: int, after_id: str | None
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        return self._page(self._sorted_ids(), queue, state, limit, after_id)

    def _list_dead(
        self, queue: str | None, limit: int, after_id: str | None
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        return self._page(sorted(self._dead), queue, DEAD, limit, after_id)

    def _page(
        self, ids: list[str], queue: str | None, state: str | None, limit: int,
        after_id: str | None,
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        """One page of `ids` (sorted) after `after_id`, filtered; and the next cursor."""
        page: list[JobRecord] = []
        previous = None
        for i in range(bisect_right(ids, after_id) if after_id is not None else 0, len(ids)):
            job_id = ids[i]
            job = self._jobs.get(job_id) if job_id != previous else None
            previous = job_id
            if job is None or (queue is not None and job.queue != queue):
                continue
            if state is not None and job.state != state:
                continue
            page.append(job.record())
            if len(page) == limit:
                return tuple(page), job_id
        return tuple(page), None

    # -- nodes ---------------------------------------------------------------------------

    def _register(self, cmd: b.RegisterNode, now: float) -> float:
        expires_at = now + cmd.ttl_s
        node = self._nodes.get(cmd.node)
        if node is None:
            if len(self._nodes) >= self.nodes_max:
                raise StorageFull(
                    f"{len(self._nodes)} nodes registered; nodes_max={self.nodes_max}"
                )
            self._nodes[cmd.node] = _Node(dict(cmd.info), now, now, expires_at)
        else:
            node.info, node.last_seen, node.expires_at = dict(cmd.info), now, expires_at
        return expires_at

    def _live_nodes(self, now: float) -> tuple[b.NodeInfo, ...]:
        return tuple(
            b.NodeInfo(name, dict(n.info), n.first_seen, n.last_seen, n.expires_at)
            for name, n in sorted(self._nodes.items())
            if n.expires_at > now
        )

    def _expire_nodes(self, now: float) -> tuple[str, ...]:
        removed = tuple(sorted(name for name, n in self._nodes.items() if n.expires_at <= now))
        for name in removed:
            del self._nodes[name]
            self._fair.pop(name, None)
        return removed
