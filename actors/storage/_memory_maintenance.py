"""The memory core's control and maintenance: cancellation, expired leases, purges, the DLQ.

Rules of this module: those of `memory` (the memory backend); a job changes state only
through `_MemoryState`'s moves.
"""

from __future__ import annotations

from heapq import heappop, heappush

from gotask._job import TERMINAL, JobState, attempt_error, expiry

from . import base as b
from ._memory_state import (
    _PLAIN,
    ACTIVE,
    CANCELLED,
    DEAD,
    MISSING,
    QUEUED,
    SCHEDULED,
    _evolve,
    _Job,
    _MemoryState,
    ended,
)

__all__ = ["_MemoryMaintenance"]


class _MemoryMaintenance(_MemoryState):
    """Cancel, requeue expired leases, purge finished jobs, and the DLQ's retry and purge."""

    # -- control and maintenance -----------------------------------------------------

    def _cancel(self, job_id: str, now: float) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            return MISSING
        if job.state is QUEUED or job.state is SCHEDULED:
            self._finish(job, CANCELLED, now)
        elif job.state is ACTIVE:
            job.rec = _evolve(job.rec, cancel_requested=True)
        return _PLAIN[job.state]

    def _requeue_expired(self, limit: int, now: float) -> b.RequeueExpiredReply:
        items, jobs = self._leases.items, self._jobs
        moved: dict[JobState, list[str]] = {QUEUED: [], DEAD: [], CANCELLED: []}
        handled = 0
        while items and handled < limit and items[0][0] <= now:
            _, job_id, attempt = heappop(items)
            job = jobs.get(job_id)
            if job is None or job.state is not ACTIVE or job.rec.attempt != attempt:
                continue
            assert job.rec.lease_expires_at is not None
            if job.rec.lease_expires_at > now:
                heappush(items, (job.rec.lease_expires_at, job_id, attempt))
                continue
            self._expire_lease(job, now)
            moved[job.state].append(job_id)
            handled += 1
        return b.RequeueExpiredReply(
            tuple(moved[QUEUED]), tuple(moved[DEAD]), tuple(moved[CANCELLED])
        )

    def _expire_lease(self, job: _Job, now: float) -> None:
        rec = job.rec
        outcome, error_type, error = expiry(rec.attempt, rec.lease_node, rec.started_attempt,
                                            rec.unstarted_expiries)
        if error_type is None:
            job.rec = _evolve(rec, releases=rec.releases + 1,
                              unstarted_expiries=rec.unstarted_expiries + 1,
                              **ended(rec, now, outcome))
        else:
            job.rec = _evolve(rec, error_type=error_type, traceback=None, error=error,
                              **ended(rec, now, outcome, attempt_error(error_type, error)))
        self._resize(job)
        if job.exhausted() and not job.rec.cancel_requested:
            self._finish(job, DEAD, now)
        else:
            self._requeue(job, now)

    def _purge_expired(self, limit: int, now: float) -> int:
        items, jobs, purged = self._expiry.items, self._jobs, 0
        while items and purged < limit and items[0][0] <= now:
            expires_at, job_id = heappop(items)
            job = jobs.get(job_id)
            if job is not None and job.rec.expires_at == expires_at and job.state in TERMINAL:
                self._remove(job)
                purged += 1
        return purged

    def _remove(self, job: _Job) -> None:
        rec = job.rec
        del self._jobs[rec.id]
        self.bytes_held -= job.size
        key = rec.idempotency_key
        if key is not None and self._keys.get(key) == rec.id:
            del self._keys[key]
        self._dead.pop(rec.id, None)
        counts = self._queues[rec.queue].counts
        counts[job.state] -= 1
        if not any(counts.values()):
            del self._queues[rec.queue]
        self._gone += 1

    def _retry_dead(self, ids: tuple[str, ...] | None, now: float) -> int:
        revived = 0
        for job_id in list(self._dead) if ids is None else ids:
            job = self._jobs.get(job_id)
            if job is None or job.state is not DEAD:
                continue
            del self._dead[job_id]
            rec = job.rec
            job.rec = _evolve(rec, attempt_base=rec.attempt - rec.releases, due_at=now,
                              finished_at=None, expires_at=None, cancel_requested=False)
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
