"""The memory core's records, indexes and state, and `_move`, through which every job moves.

Rules of this module: those of `memory` (the memory backend), whose `MemoryStorageCore`
is built on `_MemoryState`. The state is private to the core: records are mutable twins
of the contract's values, never handed out (`_Job.record()` makes the `JobRecord`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any, Generic, TypeVar

import attrs

from gotask._job import TRANSITIONS, JobRecord, JobState, NewJob, check_transition

from .base import Status

__all__ = [
    "ACTIVE",
    "CANCEL",
    "CANCELLED",
    "DEAD",
    "DUPLICATE",
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
    "_new_job",
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


class _MemoryState:
    """The memory core's state and the moves of its jobs (`MemoryStorageCore` documents
    the arguments); the commands are applied by the classes built on it."""

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
