"""The memory core's records, indexes and state, and `_move`, through which every job moves.

Rules of this module: those of `memory` (the memory backend), whose `MemoryStorageCore`
is built on `_MemoryState`. Each job's fields live once, in its
immutable `JobRecord` (`_Job.rec`), replaced on every change and handed out as it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from gotask._job import (
    TRANSITIONS,
    AttemptRecord,
    JobRecord,
    JobState,
    NewJob,
    check_transition,
    with_attempt,
)

from ._fairness import FairCredits
from .base import Status

__all__ = [
    "ACTIVE",
    "BYTES_MAX",
    "CANCEL",
    "CANCELLED",
    "DEAD",
    "DUPLICATE",
    "JOB_BYTES_OVERHEAD",
    "MISSING",
    "OK",
    "QUEUED",
    "SCHEDULED",
    "STALE",
    "SUCCEEDED",
    "_PLAIN",
    "_Job",
    "_MemoryState",
    "_Node",
    "_evolve",
    "_new_job",
    "ended",
    "job_bytes",
]

SCHEDULED, QUEUED, ACTIVE = JobState.SCHEDULED, JobState.QUEUED, JobState.ACTIVE
SUCCEEDED, DEAD, CANCELLED = JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED
OK: str = Status.OK.value
STALE: str = Status.STALE.value
DUPLICATE: str = Status.DUPLICATE.value
CANCEL: str = Status.CANCEL.value
MISSING: str = Status.MISSING.value
_PLAIN: dict[JobState, str] = {state: state.value for state in JobState}
_HEAP_SLACK = 1024
#: Default `bytes_max` of the memory core: 1 GiB of job data.
BYTES_MAX = 1 << 30
#: Bytes a job counts for beyond its data (record, indexes).
JOB_BYTES_OVERHEAD = 512
#: Bytes an entry of a job's attempt history counts for beyond its error text.
ATTEMPT_BYTES = 96
_new_record = object.__new__
_set_fields = object.__setattr__

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
    """One queue: its ready entries (in lease order, and `by_due`: `(due_at, seq, id)`,
    whose live head is the oldest ready job) and how many of its jobs are in each state."""

    ready: _Ready
    by_due: _Heap[tuple[float, int, str]]
    counts: dict[JobState, int] = attrs.Factory(lambda: dict.fromkeys(JobState, 0))


@attrs.define(eq=False)
class _Node:
    info: dict[str, Any]
    first_seen: float
    last_seen: float
    expires_at: float


@attrs.define(eq=False)
class _Job:
    """A job as the memory core holds it: its current `JobRecord` (every field, once),
    its state as the enum (compared with `is`; `_move` changes only this one, and the
    record's is brought up to date when it is handed out) and its enqueue order. The
    record is immutable, so it is handed out as it is; a change replaces it (`_evolve`:
    one copy of its field dict)."""

    rec: JobRecord
    state: JobState
    seq: int
    size: int = 0

    def exhausted(self) -> bool:
        return self.rec.attempts_counted >= self.rec.max_attempts

    def record(self) -> JobRecord:
        """The job's record, its state brought up to date (shared: it is immutable)."""
        rec = self.rec
        plain = _PLAIN[self.state]
        if rec.state is not plain:
            rec = self.rec = _evolve(rec, state=plain)
        return rec


if TYPE_CHECKING:
    from attrs import evolve as _evolve
else:
    def _evolve(rec: JobRecord, **changes: Any) -> JobRecord:
        """`attrs.evolve` without its per-field work: one copy of the record's field dict
        (a copy of a whole dict is one block copy; filling a new one key by key is not).
        (The type checker checks the changes against `attrs.evolve`'s signature.)"""
        new = _new_record(JobRecord)
        fields = rec.__dict__.copy()
        fields.update(changes)
        _set_fields(new, "__dict__", fields)
        return new


def job_bytes(rec: JobRecord) -> int:
    """What the memory core counts a job as holding: a fixed overhead, its arguments,
    result, error, traceback, progress message and attempt history."""
    return (JOB_BYTES_OVERHEAD + len(rec.args) + len(rec.result or b"") + len(rec.error or "")
            + len(rec.traceback or "") + len(rec.progress_message)
            + sum(ATTEMPT_BYTES + len(a.error or "") for a in rec.history))


def ended(rec: JobRecord, now: float, outcome: str, error: str | None = None) -> dict[str, Any]:
    """The record changes that end `rec`'s current attempt with `outcome` at `now`: its
    `AttemptRecord` appended to the history (for `_evolve`)."""
    entry = AttemptRecord(rec.attempt, rec.lease_node, rec.leased_at, now, outcome, error)
    history, dropped = with_attempt(rec.history, rec.history_dropped, entry)
    return {"history": history, "history_dropped": dropped}


def _new_job(new: NewJob, now: float, seq: int) -> _Job:
    """The job `new` enqueued at storage time `now`, `seq`-th."""
    state = SCHEDULED if new.delay_s > 0 else QUEUED
    rec = JobRecord(
        new.id, new.task, new.queue, new.args, new.priority, _PLAIN[state], now,
        now + new.delay_s, new.max_attempts, new.result_ttl_s, timeout_s=new.timeout_s,
        idempotency_key=new.idempotency_key,
    )  # fmt: skip
    return _Job(rec, state, seq)


class _MemoryState:
    """The memory core's state and the moves of its jobs (`MemoryStorageCore` documents
    the arguments); the commands are applied by the classes built on it."""

    def __init__(
        self, jobs_max: int = 10_000_000, nodes_max: int = 10_000, *,
        bytes_max: int = BYTES_MAX, accept_stale_acks: bool = False,
        fire_without_cas: bool = False,
    ) -> None:
        self.jobs_max = jobs_max
        self.bytes_max = bytes_max
        self.bytes_held = 0
        self.nodes_max = nodes_max
        self.accept_stale_acks = accept_stale_acks
        self.fire_without_cas = fire_without_cas
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
        self._fair = FairCredits(nodes_max)
        self._nodes: dict[str, _Node] = {}
        self._paused_queues: set[str] = set()
        self._seq = 0

    # -- moving jobs -------------------------------------------------------------------

    def _resize(self, job: _Job) -> None:
        """Bring `bytes_held` up to date after `job`'s record changed its data."""
        size = job_bytes(job.rec)
        self.bytes_held += size - job.size
        job.size = size

    def _move(self, job: _Job, new: JobState) -> None:
        old = job.state
        if new not in TRANSITIONS[old]:
            check_transition(old, new, job.rec.id)
        counts = self._queues[job.rec.queue].counts
        counts[old] -= 1
        counts[new] += 1
        job.state = new

    def _make_ready(self, job: _Job) -> None:
        """Queue a job in its place: (priority, due time, enqueue order)."""
        self._move(job, QUEUED)
        rec = job.rec
        queue = self._queue(rec.queue)
        queue.ready.push((-rec.priority, rec.due_at, job.seq, rec.id))
        queue.by_due.push((rec.due_at, job.seq, rec.id))

    def _schedule(self, job: _Job, due_at: float) -> None:
        self._move(job, SCHEDULED)
        job.rec = _evolve(job.rec, due_at=due_at)
        self._due.push((due_at, job.seq, job.rec.id))
        self._resize(job)

    def _finish(self, job: _Job, state: JobState, now: float, **changes: Any) -> None:
        """Move to a terminal state, applying `changes` to the record in the same copy;
        dead jobs wait in the DLQ, others expire."""
        self._move(job, state)
        rec = job.rec
        if state is DEAD:
            expires_at = None
            self._dead[rec.id] = None
        else:
            expires_at = now + rec.result_ttl_s
            self._expiry.push((expires_at, rec.id))
        job.rec = _evolve(rec, state=_PLAIN[state], finished_at=now, lease_expires_at=None,
                          expires_at=expires_at, **changes)
        self._resize(job)

    def _requeue(self, job: _Job, now: float) -> None:
        """Hand a job back (release, lease expiry): queued in its old place, unless
        cancellation was requested."""
        if job.rec.lease_expires_at is not None:
            job.rec = _evolve(job.rec, lease_expires_at=None)
        if job.rec.cancel_requested:
            self._finish(job, CANCELLED, now)
        else:
            self._make_ready(job)

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(_Ready(self._ready_live),
                                                _Heap(self._by_due_live))
        return queue

    def _ready_live(self, entry: _Entry) -> bool:
        job = self._jobs.get(entry[3])
        return job is not None and job.state is QUEUED

    def _by_due_live(self, entry: tuple[float, int, str]) -> bool:
        job = self._jobs.get(entry[2])
        return job is not None and job.state is QUEUED and job.rec.due_at == entry[0]

    def _due_live(self, entry: tuple[float, int, str]) -> bool:
        job = self._jobs.get(entry[2])
        return job is not None and job.state is SCHEDULED and job.rec.due_at == entry[0]

    def _lease_live(self, entry: tuple[float, str, int]) -> bool:
        job = self._jobs.get(entry[1])
        return job is not None and job.state is ACTIVE and job.rec.attempt == entry[2]

    def _expiry_live(self, entry: tuple[float, str]) -> bool:
        job = self._jobs.get(entry[1])
        return job is not None and job.rec.expires_at == entry[0]
