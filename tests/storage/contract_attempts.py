"""The storage contract's attempt history and attempt counting (issues 21 and 22), run
by every backend via `StorageContract`.

The write that ends an attempt appends its `AttemptRecord`; a lease that expires counts
only when its job was known to start (a `Heartbeat(started=True)`), or once a job has had
`UNSTARTED_FREE_MAX` free expiries, so a job that kills its process at once still ends
in the DLQ.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgpack

from gotask._job import HISTORY_MAX, UNSTARTED_FREE_MAX, JobRecord, NewJob
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    Command,
    EnqueueJobs,
    GetJobs,
    Heartbeat,
    LeaseJobs,
    NackItem,
    NackJobs,
    QueueWeight,
    ReleaseJobs,
    RequeueExpired,
)
from gotask.runtime.world import encode_id

__all__ = ["AttemptsContract"]

R = TypeVar("R")
_next_id = [20_000_000]


class _Harness(Protocol):
    def execute(self, cmd: Command[R]) -> R: ...
    def advance(self, seconds: float) -> None: ...
    def now(self) -> float: ...


def _enqueue(s: _Harness, **fields: Any) -> str:
    _next_id[0] += 1
    job = NewJob(encode_id(_next_id[0]), "tests.noop", "default", msgpack.packb([[], {}]),
                 **fields)
    (job_id,) = s.execute(EnqueueJobs((job,))).ids
    return job_id


def _lease(s: _Harness, node: str = "w1", timeout_s: float = 10.0) -> JobRecord:
    (job,) = s.execute(LeaseJobs(node, (QueueWeight("default"),), 1, timeout_s)).jobs
    return job


def _get(s: _Harness, job_id: str) -> JobRecord:
    (job,) = s.execute(GetJobs((job_id,))).jobs
    assert job is not None
    return job


def _expire(s: _Harness, seconds: float = 10.0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    s.advance(seconds)
    reply = s.execute(RequeueExpired())
    return reply.requeued, reply.dead


class AttemptsContract:
    """Attempt history and what counts as an attempt; mixed into `StorageContract`."""

    def test_each_finished_attempt_is_recorded(self, storage: _Harness) -> None:
        job_id = _enqueue(storage, max_attempts=3)
        first = _lease(storage, node="w1")
        storage.advance(2.0)
        nack = NackItem(job_id, 1, "ValueError", "bad input", "tb", 5.0)
        assert storage.execute(NackJobs((nack,))).statuses == ("ok",)
        storage.advance(5.0)
        second = _lease(storage, node="w2")
        storage.advance(1.0)
        assert storage.execute(AckJobs((AckItem(job_id, 2, b"\xc0"),))).statuses == ("ok",)
        rec = _get(storage, job_id)
        assert [(a.attempt, a.node, a.outcome, a.error) for a in rec.history] == [
            (1, "w1", "failed", "ValueError: bad input"), (2, "w2", "succeeded", None)]
        assert [(a.leased_at, a.ended_at) for a in rec.history] == [
            (first.leased_at, first.leased_at + 2.0), (second.leased_at, second.leased_at + 1.0)]
        assert rec.history_dropped == 0

    def test_an_expired_lease_of_a_started_job_is_node_lost(self, storage: _Harness) -> None:
        job_id = _enqueue(storage, max_attempts=3)
        job = _lease(storage, node="w1")
        beat = Heartbeat("w1", (job.token,), 10.0, started=True)
        assert storage.execute(beat).statuses == ("ok",)
        assert _get(storage, job_id).started_attempt == 1
        assert _expire(storage) == ((job_id,), ())
        rec = _get(storage, job_id)
        assert (rec.state, rec.attempts_counted, rec.error_type) == ("queued", 1, "NodeLost")
        (lost,) = rec.history
        assert (lost.attempt, lost.node, lost.outcome) == (1, "w1", "node_lost")
        assert lost.error is not None and "'w1'" in lost.error

    def test_an_expired_lease_of_an_unstarted_job_costs_no_attempt(
        self, storage: _Harness
    ) -> None:
        job_id = _enqueue(storage, max_attempts=1)
        job = _lease(storage, node="w1")
        assert storage.execute(Heartbeat("w1", (job.token,), 10.0)).statuses == ("ok",)
        assert _expire(storage) == ((job_id,), ())
        rec = _get(storage, job_id)
        assert (rec.state, rec.attempts_counted, rec.unstarted_expiries) == ("queued", 0, 1)
        assert (rec.error_type, rec.started_attempt) == (None, 0)
        assert [(a.attempt, a.node, a.outcome) for a in rec.history] == [(1, "w1", "not_started")]
        assert _lease(storage).attempt == 2

    def test_unstarted_expiries_are_free_only_a_few_times(self, storage: _Harness) -> None:
        job_id = _enqueue(storage, max_attempts=2)
        leases, dead = 0, tuple[str, ...]()
        while not dead and leases < 20:
            _lease(storage)
            leases += 1
            dead = _expire(storage)[1]
        assert (leases, dead) == (UNSTARTED_FREE_MAX + 2, (job_id,))
        rec = _get(storage, job_id)
        assert (rec.state, rec.error_type, rec.unstarted_expiries) == (
            "dead", "LeaseExpired", UNSTARTED_FREE_MAX)
        outcomes = [a.outcome for a in rec.history]
        assert outcomes == ["not_started"] * UNSTARTED_FREE_MAX + ["lease_expired"] * 2

    def test_history_keeps_the_last_attempts_and_counts_the_rest(
        self, storage: _Harness
    ) -> None:
        job_id = _enqueue(storage)
        for _ in range(HISTORY_MAX + 2):
            job = _lease(storage)
            assert storage.execute(ReleaseJobs((job.token,))).statuses == ("ok",)
        rec = _get(storage, job_id)
        assert [a.attempt for a in rec.history] == list(range(3, HISTORY_MAX + 3))
        assert {a.outcome for a in rec.history} == {"released"}
        assert (rec.history_dropped, rec.attempts_counted) == (2, 0)
