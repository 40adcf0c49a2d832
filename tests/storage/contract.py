"""The storage conformance suite, run unchanged against every backend.

A backend's test module subclasses `StorageContract` with a `storage` fixture returning
a fresh, empty `StorageHarness`, and binds `make_state_machine(factory)` to a `Test*`
name: a Hypothesis state machine that drives the backend and a small reference model
(plain dicts, O(n) scans) side by side and checks they agree after every step.

Harness rules:
- `execute(cmd)` applies one command and returns its reply; backend errors propagate.
- `now()` is the storage clock. It stands still between `advance()` calls, which move it
  forward by exactly the seconds given (a Redis or PostgreSQL harness pins its clock).
- Tests use whole seconds, so a backend storing microseconds compares exactly.
"""

from __future__ import annotations

import itertools
import unittest
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gotask._job import (
    HISTORY_MAX,
    STORED_STATES,
    UNSTARTED_FREE_MAX,
    JobRecord,
    LeaseToken,
    NewJob,
)
from gotask.actors.storage.base import (
    BATCH_MAX,
    LIMIT_MAX,
    AckItem,
    AckJobs,
    CancelJobs,
    Command,
    CountJobs,
    EnqueueJobs,
    EnqueueReply,
    ExpireNodes,
    GetJobs,
    Heartbeat,
    LeaseJobs,
    ListDead,
    ListJobs,
    ListNodes,
    NackItem,
    NackJobs,
    ProgressItem,
    PromoteDue,
    PurgeDead,
    PurgeExpired,
    QueueCount,
    QueueWeight,
    RegisterNode,
    ReleaseJobs,
    ReportProgress,
    RequeueExpired,
    RetryDead,
)
from gotask.runtime.world import encode_id

from .contract_attempts import AttemptsContract
from .contract_cron import CronContract
from .contract_queues import QueueContract

__all__ = ["StorageContract", "StorageHarness", "make_state_machine"]

R = TypeVar("R")
ARGS = msgpack.packb([[1, "two", b"\x00\xff"], {"k": 1.5, "n": None}])
_ids = itertools.count(1)
#: A well-formed id no test enqueues.
NO_SUCH_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class StorageHarness(Protocol):
    """What the suite needs from a backend under test."""

    def execute(self, cmd: Command[R]) -> R:
        """Apply one command at the current storage time and return its reply."""
        ...

    def advance(self, seconds: float) -> None:
        """Move the storage clock forward by `seconds`."""
        ...

    def now(self) -> float:
        """The storage clock, in seconds."""
        ...


def new_job(queue: str = "default", **fields: Any) -> NewJob:
    """A NewJob with a fresh, increasing id and the given fields."""
    return NewJob(id=encode_id(next(_ids)), task="tests.noop", queue=queue, args=ARGS, **fields)


def enqueue(s: StorageHarness, *jobs: NewJob) -> tuple[str, ...]:
    reply = s.execute(EnqueueJobs(jobs))
    assert all(reply.created), reply
    return reply.ids


def lease(
    s: StorageHarness,
    queues: Iterable[str | tuple[str, int]] = ("default",),
    limit: int = 10,
    timeout_s: float = 30.0,
    node: str = "n1",
) -> tuple[JobRecord, ...]:
    weights = tuple(
        QueueWeight(q, 1) if isinstance(q, str) else QueueWeight(*q) for q in queues
    )
    return s.execute(LeaseJobs(node, weights, limit, timeout_s)).jobs


def lease_one(s: StorageHarness, **kwargs: Any) -> JobRecord:
    (job,) = lease(s, limit=1, **kwargs)
    return job


def get(s: StorageHarness, job_id: str) -> JobRecord:
    (job,) = s.execute(GetJobs((job_id,))).jobs
    assert job is not None, f"job {job_id} is missing"
    return job


def ack(s: StorageHarness, job: JobRecord | LeaseToken, result: bytes = b"\xc0") -> str:
    token = job.token if isinstance(job, JobRecord) else job
    (status,) = s.execute(AckJobs((AckItem(token.job_id, token.attempt, result),))).statuses
    return status


def nack(
    s: StorageHarness,
    job: JobRecord | LeaseToken,
    outcome: str = "retry",
    retry_in_s: float | None = None,
) -> tuple[str, str]:
    token = job.token if isinstance(job, JobRecord) else job
    item = NackItem(token.job_id, token.attempt, "ValueError", "boom", "tb", retry_in_s, outcome)
    reply = s.execute(NackJobs((item,)))
    return reply.statuses[0], reply.states[0]


def kill(s: StorageHarness, max_attempts: int = 1, queue: str = "default") -> str:
    """Enqueue a job and fail it into the DLQ; return its id."""
    (job_id,) = enqueue(s, new_job(queue, max_attempts=max_attempts))
    job = lease_one(s, queues=(queue,))
    assert nack(s, job, outcome="dead") == ("ok", "dead")
    return job_id


class StorageContract(CronContract, QueueContract, AttemptsContract):
    """The contract every storage backend passes; needs a `storage` fixture."""

    # -- enqueue and read -------------------------------------------------------------

    def test_enqueue_then_get(self, storage: StorageHarness) -> None:
        job = new_job(priority=3, timeout_s=5.0, result_ttl_s=60.0, max_attempts=4)
        assert storage.execute(EnqueueJobs((job,))) == EnqueueReply((job.id,), (True,))
        rec = get(storage, job.id)
        assert (rec.id, rec.task, rec.queue, rec.args) == (job.id, job.task, "default", ARGS)
        assert (rec.priority, rec.max_attempts, rec.timeout_s, rec.result_ttl_s) == (3, 4, 5, 60)
        assert rec.state == "queued"
        assert rec.created_at == rec.due_at == storage.now()
        assert (rec.attempt, rec.releases, rec.attempt_base, rec.settled_attempt) == (0, 0, 0, 0)
        assert (rec.leased_at, rec.lease_expires_at, rec.lease_node) == (None, None, None)
        assert (rec.result, rec.error_type, rec.finished_at, rec.expires_at) == (None,) * 4
        assert (rec.progress, rec.progress_message, rec.cancel_requested) == (0.0, "", False)

    def test_get_missing_is_none(self, storage: StorageHarness) -> None:
        assert storage.execute(GetJobs((NO_SUCH_ID,))).jobs == (None,)

    def test_args_are_delivered_byte_identical(self, storage: StorageHarness) -> None:
        # Non-canonical encodings (int 1 as int8, a str8 header) survive only if never
        # decoded and re-encoded.
        odd = [b"\x92\x91\xd0\x01\x80", b"\x92\x91\xd9\x01a\x81\xa1k\xc3", msgpack.packb([[], {}])]
        ids = enqueue(storage, *(NewJob(encode_id(next(_ids)), "t", "default", a) for a in odd))
        leased = lease(storage, limit=3)
        assert [j.id for j in leased] == list(ids)
        assert [j.args for j in leased] == odd

    def test_enqueue_repeated_id_is_not_created(self, storage: StorageHarness) -> None:
        job = new_job()
        enqueue(storage, job)
        again = NewJob(job.id, "other", "other", b"\x90", priority=9)
        assert storage.execute(EnqueueJobs((again,))) == EnqueueReply((job.id,), (False,))
        assert get(storage, job.id).task == job.task

    def test_idempotency_key_returns_existing_job(self, storage: StorageHarness) -> None:
        first, second, third = (new_job(idempotency_key="k") for _ in range(3))
        other = new_job(idempotency_key="other")
        reply = storage.execute(EnqueueJobs((first, second, other)))
        assert reply == EnqueueReply((first.id, first.id, other.id), (True, False, True))
        assert storage.execute(EnqueueJobs((third,))) == EnqueueReply((first.id,), (False,))
        assert storage.execute(GetJobs((second.id, third.id))).jobs == (None, None)
        assert get(storage, first.id).idempotency_key == "k"

    def test_idempotency_key_holds_after_the_job_finished(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(idempotency_key="k", result_ttl_s=60.0))
        assert ack(storage, lease_one(storage)) == "ok"
        repeat = new_job(idempotency_key="k")
        assert storage.execute(EnqueueJobs((repeat,))) == EnqueueReply((job_id,), (False,))

    # -- due times and order ------------------------------------------------------------

    def test_delayed_job_waits_until_due(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(delay_s=10.0))
        rec = get(storage, job_id)
        assert rec.state == "scheduled"
        assert rec.due_at == rec.created_at + 10.0
        assert lease(storage) == ()
        storage.advance(9.0)
        assert lease(storage) == ()
        storage.advance(1.0)
        assert [j.id for j in lease(storage)] == [job_id]

    def test_priority_first_then_fifo(self, storage: StorageHarness) -> None:
        prios = [0, 5, 0, 5, 1, 0]
        ids = enqueue(storage, *(new_job(priority=p) for p in prios))
        expected = [ids[1], ids[3], ids[4], ids[0], ids[2], ids[5]]
        assert [lease_one(storage).id for _ in prios[:3]] == expected[:3]
        assert [j.id for j in lease(storage, limit=10)] == expected[3:]

    def test_fifo_follows_due_time_not_promotion(self, storage: StorageHarness) -> None:
        (early,) = enqueue(storage, new_job(delay_s=2.0))
        (late,) = enqueue(storage, new_job(delay_s=9.0))
        storage.advance(5.0)
        (now_job,) = enqueue(storage, new_job())
        storage.advance(5.0)
        assert [j.id for j in lease(storage)] == [early, now_job, late]

    def test_lease_is_limited_and_work_conserving(self, storage: StorageHarness) -> None:
        enqueue(storage, *(new_job() for _ in range(5)))
        assert len(lease(storage, limit=3)) == 3
        assert len(lease(storage, limit=10)) == 2
        assert lease(storage, limit=10) == ()

    def test_lease_only_from_named_queues(self, storage: StorageHarness) -> None:
        (a,) = enqueue(storage, new_job("a"))
        (b,) = enqueue(storage, new_job("b"))
        assert [j.id for j in lease(storage, queues=("b", "c"))] == [b]
        assert [j.id for j in lease(storage, queues=("a",))] == [a]

    def test_lease_sets_attempt_and_expiry(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job())
        storage.advance(3.0)
        job = lease_one(storage, timeout_s=20.0, node="worker-7")
        assert (job.id, job.state, job.attempt) == (job_id, "active", 1)
        assert job.leased_at == storage.now()
        assert job.lease_expires_at == storage.now() + 20.0
        assert job.lease_node == "worker-7"
        assert get(storage, job_id) == job

    # -- fairness ---------------------------------------------------------------------------

    def _fill(self, storage: StorageHarness, per_queue: int, *queues: str) -> None:
        for queue in queues:
            enqueue(storage, *(new_job(queue) for _ in range(per_queue)))

    def test_weighted_fairness_one_lease_at_a_time(self, storage: StorageHarness) -> None:
        self._fill(storage, 300, "hi", "lo")
        got = Counter(lease_one(storage, queues=(("hi", 3), ("lo", 1))).queue for _ in range(200))
        assert abs(got["hi"] - 150) <= 10, got

    def test_weighted_fairness_in_batches(self, storage: StorageHarness) -> None:
        self._fill(storage, 300, "hi", "lo")
        got = Counter(j.queue for _ in range(25) for j in lease(storage, (("hi", 3), ("lo", 1)), 8))
        assert sum(got.values()) == 200
        assert abs(got["hi"] - 150) <= 10, got

    def test_low_weight_queue_never_starves(self, storage: StorageHarness) -> None:
        self._fill(storage, 150, "busy", "quiet")
        got = Counter(
            lease_one(storage, queues=(("busy", 50), ("quiet", 1))).queue for _ in range(102)
        )
        assert got["quiet"] >= 1, got

    def test_fairness_never_leaves_slots_idle(self, storage: StorageHarness) -> None:
        self._fill(storage, 2, "hi")
        self._fill(storage, 10, "lo")
        assert len(lease(storage, (("hi", 5), ("lo", 1)), limit=12)) == 12

    # -- heartbeat -----------------------------------------------------------------------

    def test_heartbeat_extends_current_lease(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage, timeout_s=10.0)
        storage.advance(8.0)
        reply = storage.execute(Heartbeat("n1", (job.token,), 10.0))
        assert reply.statuses == ("ok",)
        assert reply.lease_expires_at == storage.now() + 10.0
        assert get(storage, job.id).lease_expires_at == storage.now() + 10.0
        storage.advance(8.0)
        assert storage.execute(RequeueExpired()).requeued == ()
        assert get(storage, job.id).state == "active"

    def test_heartbeat_may_shorten_a_lease(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage, timeout_s=60.0)
        storage.execute(Heartbeat("n1", (job.token,), 5.0))
        storage.advance(5.0)
        assert storage.execute(RequeueExpired()).requeued == (job.id,)

    def test_heartbeat_rejects_stale_tokens(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(), new_job())
        first, second = lease(storage, limit=2)
        assert ack(storage, second) == "ok"
        tokens = (
            LeaseToken(first.id, 2),
            LeaseToken(first.id, 0),
            LeaseToken(NO_SUCH_ID, 1),
            second.token,
            first.token,
        )
        reply = storage.execute(Heartbeat("n1", tokens, 30.0))
        assert reply.statuses == ("stale", "stale", "stale", "stale", "ok")

    def test_heartbeat_tells_worker_to_cancel(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage, timeout_s=10.0)
        assert storage.execute(CancelJobs((job.id,))).states == ("active",)
        storage.advance(5.0)
        assert storage.execute(Heartbeat("n1", (job.token,), 10.0)).statuses == ("cancel",)
        assert get(storage, job.id).lease_expires_at == storage.now() + 10.0

    # -- ack --------------------------------------------------------------------------------

    def test_ack_completes_once(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(result_ttl_s=60.0))
        job = lease_one(storage)
        storage.advance(2.0)
        assert ack(storage, job, b"\x2a") == "ok"
        rec = get(storage, job.id)
        assert (rec.state, rec.result, rec.settled_attempt) == ("succeeded", b"\x2a", 1)
        assert rec.finished_at == storage.now()
        assert rec.expires_at == storage.now() + 60.0
        assert rec.lease_expires_at is None
        assert ack(storage, job, b"\x2b") == "duplicate"
        assert ack(storage, LeaseToken(job.id, 2)) == "stale"
        assert get(storage, job.id) == rec

    def test_a_success_clears_an_earlier_attempts_error(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(max_attempts=3))
        assert nack(storage, lease_one(storage), retry_in_s=None)[0] == "ok"
        second = lease_one(storage)
        assert get(storage, second.id).error_type == "ValueError"
        assert ack(storage, second) == "ok"
        rec = get(storage, second.id)
        assert (rec.state, rec.error_type, rec.error, rec.traceback) == (
            "succeeded", None, None, None)

    def test_ack_with_stale_token_after_requeue(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        first = lease_one(storage, timeout_s=10.0)
        storage.advance(10.0)
        assert storage.execute(RequeueExpired()).requeued == (first.id,)
        assert ack(storage, first) == "stale"
        second = lease_one(storage)
        assert second.attempt == 2
        assert ack(storage, first) == "stale"
        assert ack(storage, second) == "ok"
        assert ack(storage, first) == "stale"

    def test_late_ack_before_requeue_is_accepted(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage, timeout_s=10.0)
        storage.advance(25.0)
        assert ack(storage, job) == "ok"
        assert storage.execute(RequeueExpired()).requeued == ()

    def test_ack_of_unknown_job_is_stale(self, storage: StorageHarness) -> None:
        assert ack(storage, LeaseToken(NO_SUCH_ID, 1)) == "stale"

    def test_ack_queue_hint_never_changes_the_answer(self, storage: StorageHarness) -> None:
        # A worker names the job's queue so a backend may skip a lookup; a wrong name
        # must be answered as if there were none.
        enqueue(storage, *(new_job("q1") for _ in range(4)), new_job("q2"))
        jobs = lease(storage, queues=("q1", "q2"), limit=5)
        right, wrong, missing, fake = (j for j in jobs if j.queue == "q1")
        (other,) = (j for j in jobs if j.queue == "q2")

        def ack_hinted(job: JobRecord | LeaseToken, queue: str) -> str:
            token = job.token if isinstance(job, JobRecord) else job
            item = AckItem(token.job_id, token.attempt, b"\xc0", queue)
            (status,) = storage.execute(AckJobs((item,))).statuses
            return status

        assert ack_hinted(right, "q1") == "ok"
        assert ack_hinted(wrong, "q2") == "ok"
        assert ack_hinted(missing, "nosuchqueue") == "ok"
        assert ack_hinted(fake, f"q1}}:j:{fake.id}") == "ok"
        assert ack_hinted(right, "q2") == "duplicate"
        assert ack_hinted(LeaseToken(other.id, 2), "q2") == "stale"
        assert ack_hinted(LeaseToken(NO_SUCH_ID, 1), "q1") == "stale"
        assert [get(storage, j.id).state for j in (right, wrong, missing, fake, other)] == [
            "succeeded"] * 4 + ["active"]
        counts = {(c.queue, c.state): c.count for c in storage.execute(CountJobs()).counts}
        assert counts == {("q1", "succeeded"): 4, ("q2", "active"): 1}

    def test_one_settlement_per_token(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(), new_job())
        first, second = lease(storage, limit=2)
        assert nack(storage, first, outcome="dead") == ("ok", "dead")
        assert ack(storage, first) == "duplicate"
        assert ack(storage, second) == "ok"
        assert nack(storage, second) == ("duplicate", "succeeded")
        assert get(storage, second.id).error_type is None

    # -- nack -------------------------------------------------------------------------------

    def test_nack_retry_schedules_after_delay(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(max_attempts=3))
        job = lease_one(storage)
        assert nack(storage, job, retry_in_s=30.0) == ("ok", "scheduled")
        rec = get(storage, job.id)
        assert rec.due_at == storage.now() + 30.0
        assert (rec.error_type, rec.error, rec.traceback) == ("ValueError", "boom", "tb")
        assert (rec.settled_attempt, rec.lease_expires_at) == (1, None)
        storage.advance(29.0)
        assert lease(storage) == ()
        storage.advance(1.0)
        assert lease_one(storage).attempt == 2

    def test_nack_retry_without_delay_is_due_at_once(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        assert nack(storage, lease_one(storage), retry_in_s=None)[0] == "ok"
        assert lease_one(storage).attempt == 2

    def test_nack_retry_when_exhausted_goes_dead(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(max_attempts=2))
        assert nack(storage, lease_one(storage), retry_in_s=0.0) == ("ok", "scheduled")
        storage.advance(1.0)
        assert nack(storage, lease_one(storage), retry_in_s=0.0) == ("ok", "dead")
        rec = get(storage, job_id)
        assert (rec.state, rec.attempt, rec.finished_at, rec.expires_at) == (
            "dead", 2, storage.now(), None,
        )  # fmt: skip
        assert [j.id for j in storage.execute(ListDead()).jobs] == [job_id]

    def test_nack_dead_is_immediate(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(max_attempts=5))
        assert nack(storage, lease_one(storage), outcome="dead") == ("ok", "dead")
        assert get(storage, job_id).attempt == 1

    def test_nack_cancelled(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(result_ttl_s=10.0))
        assert nack(storage, lease_one(storage), outcome="cancelled") == ("ok", "cancelled")
        assert get(storage, job_id).expires_at == storage.now() + 10.0

    def test_nack_is_fenced(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage)
        assert nack(storage, LeaseToken(job.id, 2)) == ("stale", "active")
        assert nack(storage, job, retry_in_s=5.0) == ("ok", "scheduled")
        assert nack(storage, job, outcome="dead") == ("duplicate", "scheduled")
        assert nack(storage, LeaseToken(NO_SUCH_ID, 1)) == ("stale", "missing")

    # -- cancel -----------------------------------------------------------------------------

    def test_cancel_queued_and_scheduled_at_once(self, storage: StorageHarness) -> None:
        ids = enqueue(storage, new_job(result_ttl_s=5.0), new_job(delay_s=10.0))
        assert storage.execute(CancelJobs(ids)).states == ("cancelled", "cancelled")
        rec = get(storage, ids[0])
        assert (rec.finished_at, rec.expires_at) == (storage.now(), storage.now() + 5.0)
        storage.advance(10.0)
        assert lease(storage) == ()

    def test_cancel_active_is_cooperative(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(max_attempts=5), new_job(), new_job())
        first, second, third = lease(storage, limit=3)
        ids = (first.id, second.id, third.id)
        assert storage.execute(CancelJobs(ids)).states == ("active",) * 3
        assert get(storage, first.id).cancel_requested
        assert nack(storage, first, outcome="cancelled") == ("ok", "cancelled")
        assert nack(storage, second, retry_in_s=0.0) == ("ok", "cancelled")
        assert ack(storage, third) == "ok"
        assert get(storage, third.id).state == "succeeded"

    def test_cancel_leaves_terminal_jobs_and_reports_missing(self, storage: StorageHarness) -> None:
        dead = kill(storage)
        (done,) = enqueue(storage, new_job())
        assert ack(storage, lease_one(storage)) == "ok"
        (gone,) = enqueue(storage, new_job())
        storage.execute(CancelJobs((gone,)))
        missing = NO_SUCH_ID
        states = storage.execute(CancelJobs((dead, done, gone, missing))).states
        assert states == ("dead", "succeeded", "cancelled", "missing")

    def test_expired_lease_of_cancel_requested_job_cancels(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job(max_attempts=1))
        job = lease_one(storage, timeout_s=5.0)
        storage.execute(CancelJobs((job.id,)))
        storage.advance(5.0)
        reply = storage.execute(RequeueExpired())
        assert (reply.requeued, reply.dead, reply.cancelled) == ((), (), (job.id,))

    # -- release ----------------------------------------------------------------------------

    def test_release_does_not_count_and_keeps_place(self, storage: StorageHarness) -> None:
        first_id, _ = enqueue(storage, new_job(max_attempts=1), new_job())
        job = lease_one(storage)
        reply = storage.execute(ReleaseJobs((job.token,)))
        assert (reply.statuses, reply.states) == (("ok",), ("queued",))
        again = lease_one(storage)
        assert (again.id, again.attempt, again.releases) == (first_id, 2, 1)
        assert again.attempts_counted == 1
        assert nack(storage, again, retry_in_s=0.0) == ("ok", "dead")

    def test_release_is_fenced(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage)
        stale = LeaseToken(job.id, 3)
        assert storage.execute(ReleaseJobs((stale,))).statuses == ("stale",)
        assert storage.execute(ReleaseJobs((job.token,))).statuses == ("ok",)
        assert storage.execute(ReleaseJobs((job.token,))).statuses == ("stale",)

    def test_release_of_cancel_requested_job_cancels(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage)
        storage.execute(CancelJobs((job.id,)))
        assert storage.execute(ReleaseJobs((job.token,))).states == ("cancelled",)

    # -- progress ---------------------------------------------------------------------------

    def test_progress_is_fenced(self, storage: StorageHarness) -> None:
        enqueue(storage, new_job())
        job = lease_one(storage)
        items = (ProgressItem(job.id, 1, 0.5, "half"), ProgressItem(job.id, 2, 0.9, "no"))
        assert storage.execute(ReportProgress(items)).accepted == (True, False)
        rec = get(storage, job.id)
        assert (rec.progress, rec.progress_message) == (0.5, "half")
        assert ack(storage, job) == "ok"
        late = ReportProgress((ProgressItem(job.id, 1, 0.7),))
        assert storage.execute(late).accepted == (False,)

    # -- lease expiry -----------------------------------------------------------------------

    def test_requeue_expired_counts_the_attempt(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(max_attempts=3))
        job = lease_one(storage, timeout_s=10.0, node="w1")
        storage.execute(Heartbeat("w1", (job.token,), 10.0, started=True))
        storage.advance(9.0)
        assert storage.execute(RequeueExpired()).requeued == ()
        storage.advance(1.0)
        assert storage.execute(RequeueExpired()).requeued == (job_id,)
        rec = get(storage, job_id)
        assert (rec.state, rec.attempt, rec.error_type) == ("queued", 1, "NodeLost")
        assert rec.attempts_counted == 1
        assert rec.lease_expires_at is None
        assert lease_one(storage).attempt == 2

    def test_poison_job_ends_dead_after_max_attempts(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(max_attempts=3))
        leases, dead = 0, tuple[str, ...]()
        while not dead and leases < 10:
            job = lease_one(storage, timeout_s=10.0)
            assert job.attempt == leases + 1
            storage.execute(Heartbeat("n1", (job.token,), 10.0, started=True))
            leases += 1
            storage.advance(10.0)
            dead = storage.execute(RequeueExpired()).dead
        assert (leases, dead) == (3, (job_id,))
        rec = get(storage, job_id)
        assert (rec.state, rec.error_type, rec.expires_at) == ("dead", "NodeLost", None)
        assert lease(storage) == ()

    def test_requeue_expired_respects_limit(self, storage: StorageHarness) -> None:
        enqueue(storage, *(new_job() for _ in range(5)))
        lease(storage, timeout_s=5.0)
        storage.advance(5.0)
        assert len(storage.execute(RequeueExpired(limit=2)).requeued) == 2
        assert len(storage.execute(RequeueExpired(limit=10)).requeued) == 3

    # -- promotion --------------------------------------------------------------------------

    def test_promote_due(self, storage: StorageHarness) -> None:
        ids = enqueue(storage, *(new_job(delay_s=d) for d in (5.0, 5.0, 50.0, 5.0)))
        storage.advance(5.0)
        assert storage.execute(PromoteDue(limit=2)).promoted == 2
        assert storage.execute(PromoteDue()).promoted == 1
        assert storage.execute(PromoteDue()).promoted == 0
        states = [j.state for j in storage.execute(GetJobs(ids)).jobs if j is not None]
        assert states == ["queued", "queued", "scheduled", "queued"]

    # -- retention --------------------------------------------------------------------------

    def test_purge_after_ttl_removes_job_and_frees_key(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(result_ttl_s=60.0, idempotency_key="k"))
        assert ack(storage, lease_one(storage)) == "ok"
        storage.advance(59.0)
        assert storage.execute(PurgeExpired()).purged == 0
        storage.advance(1.0)
        assert storage.execute(PurgeExpired()).purged == 1
        assert storage.execute(GetJobs((job_id,))).jobs == (None,)
        fresh = new_job(idempotency_key="k")
        assert storage.execute(EnqueueJobs((fresh,))) == EnqueueReply((fresh.id,), (True,))

    def test_purge_removes_cancelled_jobs(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(result_ttl_s=0.0))
        storage.execute(CancelJobs((job_id,)))
        assert storage.execute(PurgeExpired()).purged == 1
        assert storage.execute(GetJobs((job_id,))).jobs == (None,)

    def test_purge_respects_limit(self, storage: StorageHarness) -> None:
        enqueue(storage, *(new_job(result_ttl_s=0.0) for _ in range(3)))
        for job in lease(storage):
            ack(storage, job)
        assert storage.execute(PurgeExpired(limit=2)).purged == 2
        assert storage.execute(PurgeExpired(limit=2)).purged == 1

    def test_dead_jobs_stay_until_purged_from_dlq(self, storage: StorageHarness) -> None:
        job_id = kill(storage)
        storage.advance(10_000_000.0)
        assert storage.execute(PurgeExpired()).purged == 0
        assert get(storage, job_id).state == "dead"

    # -- DLQ ----------------------------------------------------------------------------

    def test_list_dead_pages_by_id_and_filters_by_queue(self, storage: StorageHarness) -> None:
        ids = [kill(storage, queue=q) for q in ("a", "b", "a", "a", "b")]
        enqueue(storage, new_job("a"))
        first = storage.execute(ListDead(limit=2))
        assert [j.id for j in first.jobs] == ids[:2]
        assert first.next_after == ids[1]
        rest = storage.execute(ListDead(limit=10, after_id=first.next_after))
        assert ([j.id for j in rest.jobs], rest.next_after) == (ids[2:], None)
        only_a = storage.execute(ListDead(queue="a")).jobs
        assert [j.id for j in only_a] == [ids[0], ids[2], ids[3]]

    def test_retry_dead_gives_fresh_attempts(self, storage: StorageHarness) -> None:
        (job_id,) = enqueue(storage, new_job(max_attempts=2))
        nack(storage, lease_one(storage))
        assert nack(storage, lease_one(storage)) == ("ok", "dead")
        assert storage.execute(RetryDead((job_id,))).requeued == 1
        rec = get(storage, job_id)
        assert (rec.state, rec.attempt, rec.attempt_base, rec.attempts_counted) == (
            "queued", 2, 2, 0,
        )  # fmt: skip
        assert (rec.finished_at, rec.expires_at) == (None, None)
        assert nack(storage, lease_one(storage)) == ("ok", "scheduled")
        job = lease_one(storage)
        assert job.attempt == 4
        assert nack(storage, job) == ("ok", "dead")

    def test_retry_dead_all_and_ignores_others(self, storage: StorageHarness) -> None:
        dead = [kill(storage) for _ in range(3)]
        (live,) = enqueue(storage, new_job())
        assert storage.execute(RetryDead((live, NO_SUCH_ID))).requeued == 0
        assert storage.execute(RetryDead()).requeued == 3
        assert {j.id for j in lease(storage)} == {*dead, live}
        assert storage.execute(ListDead()).jobs == ()

    def test_purge_dead(self, storage: StorageHarness) -> None:
        (keyed,) = enqueue(storage, new_job(idempotency_key="k", max_attempts=1))
        nack(storage, lease_one(storage), outcome="dead")
        others = [kill(storage) for _ in range(2)]
        (live,) = enqueue(storage, new_job())
        assert storage.execute(PurgeDead((keyed, live))).purged == 1
        assert storage.execute(PurgeDead()).purged == 2
        assert storage.execute(GetJobs((keyed, *others))).jobs == (None, None, None)
        fresh = new_job(idempotency_key="k")
        assert storage.execute(EnqueueJobs((fresh,))).created == (True,)

    # -- counts and listing -----------------------------------------------------------------

    def test_count_jobs_per_queue_and_state(self, storage: StorageHarness) -> None:
        assert storage.execute(CountJobs()).counts == ()
        enqueue(storage, new_job("a"), new_job("a"), new_job("a", delay_s=5.0), new_job("b"))
        lease(storage, queues=("a",), limit=1)
        kill(storage, queue="b")
        assert storage.execute(CountJobs()).counts == (
            QueueCount("a", "active", 1),
            QueueCount("a", "queued", 1),
            QueueCount("a", "scheduled", 1),
            QueueCount("b", "dead", 1),
            QueueCount("b", "queued", 1),
        )

    def test_list_jobs_pages_in_id_order(self, storage: StorageHarness) -> None:
        ids = enqueue(storage, *(new_job("a" if i % 2 else "b") for i in range(7)))
        lease(storage, queues=("a",), limit=1)
        page = storage.execute(ListJobs(limit=3))
        assert ([j.id for j in page.jobs], page.next_after) == (list(ids[:3]), ids[2])
        rest = storage.execute(ListJobs(limit=10, after_id=page.next_after))
        assert ([j.id for j in rest.jobs], rest.next_after) == (list(ids[3:]), None)
        in_b = storage.execute(ListJobs(queue="b")).jobs
        assert [j.id for j in in_b] == list(ids[0::2])
        queued_a = storage.execute(ListJobs(queue="a", state="queued")).jobs
        assert [j.id for j in queued_a] == [ids[3], ids[5]]

    # -- nodes --------------------------------------------------------------------------

    def test_node_registry_expires_nodes(self, storage: StorageHarness) -> None:
        start = storage.now()
        info = {"pid": 42, "queues": ("a", "b"), "host": "h"}
        assert storage.execute(RegisterNode("n1", info, 10.0)).expires_at == start + 10.0
        storage.execute(RegisterNode("n2", {}, 30.0))
        nodes = storage.execute(ListNodes()).nodes
        assert [(n.node, n.expires_at) for n in nodes] == [("n1", start + 10), ("n2", start + 30)]
        assert nodes[0].info == info
        storage.advance(10.0)
        assert [n.node for n in storage.execute(ListNodes()).nodes] == ["n2"]
        storage.execute(RegisterNode("n2", {"v": 2}, 30.0))
        assert storage.execute(ExpireNodes()).removed == ("n1",)
        (n2,) = storage.execute(ListNodes()).nodes
        assert (n2.first_seen, n2.last_seen, n2.info) == (start, storage.now(), {"v": 2})
        assert storage.execute(ExpireNodes()).removed == ()

    # -- limits -------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "build",
        [
            lambda: EnqueueJobs(tuple(new_job() for _ in range(BATCH_MAX + 1))),
            lambda: AckJobs((AckItem("x", 1, b""),) * (BATCH_MAX + 1)),
            lambda: GetJobs(("x",) * (BATCH_MAX + 1)),
            lambda: RetryDead(("x",) * (BATCH_MAX + 1)),
            lambda: LeaseJobs("n", (QueueWeight("q"),), 0, 30.0),
            lambda: LeaseJobs("n", (QueueWeight("q"),), LIMIT_MAX + 1, 30.0),
            lambda: LeaseJobs("n", (QueueWeight("q"),), 1, 0.0),
            lambda: LeaseJobs("n", (), 1, 30.0),
            lambda: LeaseJobs("n", (QueueWeight("q"), QueueWeight("q")), 1, 30.0),
            lambda: QueueWeight("q", 0),
            lambda: ListJobs(limit=LIMIT_MAX + 1),
            lambda: PurgeExpired(limit=0),
            lambda: NackItem("x", 1, "E", "e", "", None, "maybe"),
            lambda: NackItem("x", 1, "E", "e", "", -1.0),
            lambda: ProgressItem("x", 1, 1.5),
            lambda: RegisterNode("n", {}, -1.0),
        ],
    )
    def test_oversized_or_invalid_commands_are_rejected(
        self, storage: StorageHarness, build: Callable[[], object]
    ) -> None:
        with pytest.raises(ValueError):
            build()
        assert storage.execute(CountJobs()).counts == ()



# -- the stateful test ------------------------------------------------------------------

PENDING = "pending"  # scheduled or queued: the model does not track promotion
PURGED = "purged"
_STORED = frozenset(state.value for state in STORED_STATES)
_picks = st.integers(0, 1 << 16)
_deltas = st.sampled_from([0, 0, 0, -1, 1])
_specs = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from([0, 0, 0, 1, 2]),
    st.sampled_from([0.0, 0.0, 1.0, 5.0]),
    st.sampled_from([None, None, "k1", "k2", "k3"]),
    st.integers(1, 3),
    st.sampled_from([0.0, 10.0, 100.0]),
)


@attrs.define
class _Model:
    """The reference model of one job."""

    id: str
    queue: str
    priority: int
    seq: int
    max_attempts: int
    ttl_s: float
    args: bytes
    key: str | None
    due_at: float
    state: str = PENDING
    attempt: int = 0
    counted: int = 0
    settled: int = 0
    cancel_requested: bool = False
    lease_expires_at: float | None = None
    expires_at: float | None = None
    acks: int = 0
    started: int = 0
    free_expiries: int = 0
    ended: list[str] = attrs.Factory(list)

    def order(self) -> tuple[int, float, int]:
        return (-self.priority, self.due_at, self.seq)

    def fence(self, attempt: int) -> str:
        if self.state == "active" and self.attempt == attempt:
            return "ok"
        if self.state != PURGED and attempt and self.settled == attempt:
            return "duplicate"
        return "stale"

    def finish(self, state: str, now: float) -> None:
        self.state, self.lease_expires_at = state, None
        self.expires_at = None if state == "dead" else now + self.ttl_s

    def hand_back(self, now: float) -> None:
        """A release or an expired lease: queued in place unless cancel was requested."""
        self.lease_expires_at = None
        if self.cancel_requested:
            self.finish("cancelled", now)
        else:
            self.state = PENDING

    def matches(self, actual: str, now: float) -> bool:
        if self.state == PENDING:
            return actual == "scheduled" or (actual == "queued" and self.due_at <= now)
        return actual == self.state


class _StorageMachine(RuleBasedStateMachine):
    """Drives a backend and the model side by side; see `make_state_machine`."""

    harness_factory: Callable[[], StorageHarness]

    def __init__(self) -> None:
        super().__init__()
        self.s = type(self).harness_factory()
        self.jobs: dict[str, _Model] = {}
        self.keys: dict[str, str] = {}
        self.seen_attempts: dict[str, int] = {}
        self.serial = 0

    def teardown(self) -> None:
        close = getattr(self.s, "close", None)
        if close is not None:
            close()

    def _pick(self, pick: int, prefer: str = "active") -> _Model:
        """Choose a job; an even `pick` prefers one in state `prefer` (the interesting case)."""
        models = list(self.jobs.values())
        preferred = [m for m in models if m.state == prefer]
        pool = preferred if preferred and pick % 2 == 0 else models
        return pool[(pick // 2) % len(pool)]

    def _add(self, spec: tuple[str, int, float, str | None, int, float]) -> tuple[NewJob, str]:
        queue, priority, delay_s, key, max_attempts, ttl_s = spec
        self.serial += 1
        job = NewJob(
            encode_id(self.serial), "t", queue, msgpack.packb([[self.serial], {}]),
            priority, delay_s, max_attempts, None, ttl_s, key,
        )  # fmt: skip
        if key is not None and key in self.keys:
            return job, self.keys[key]
        now = self.s.now()
        model = _Model(job.id, queue, priority, self.serial, max_attempts, ttl_s, job.args, key,
                       now + delay_s)  # fmt: skip
        self.jobs[job.id] = model
        if key is not None:
            self.keys[key] = job.id
        return job, job.id

    @initialize(specs=st.lists(_specs, min_size=1, max_size=8))
    def start(self, specs: list[tuple[str, int, float, str | None, int, float]]) -> None:
        self.enqueue(specs)

    @precondition(lambda self: len(self.jobs) < 48)
    @rule(specs=st.lists(_specs, min_size=1, max_size=4))
    def enqueue(self, specs: list[tuple[str, int, float, str | None, int, float]]) -> None:
        added = [self._add(spec) for spec in specs]
        created = tuple(job.id == job_id for job, job_id in added)
        reply = self.s.execute(EnqueueJobs(tuple(job for job, _ in added)))
        assert reply == EnqueueReply(tuple(job_id for _, job_id in added), created)

    @rule(
        node=st.sampled_from(["n1", "n2"]),
        names=st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a"), ("a", "b")]),
        weights=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        limit=st.integers(1, 5),
        timeout_s=st.sampled_from([5.0, 20.0]),
    )
    def lease(
        self, node: str, names: tuple[str, ...], weights: tuple[int, int], limit: int,
        timeout_s: float,
    ) -> None:
        now = self.s.now()
        queues = tuple(QueueWeight(q, w) for q, w in zip(names, weights, strict=False))
        got = self.s.execute(LeaseJobs(node, queues, limit, timeout_s)).jobs
        ready = {
            q: sorted((m for m in self.jobs.values()
                       if m.queue == q and m.state == PENDING and m.due_at <= now),
                      key=_Model.order)
            for q in names
        }  # fmt: skip
        assert len(got) == min(limit, sum(len(r) for r in ready.values()))
        for q in names:
            taken = [j.id for j in got if j.queue == q]
            assert taken == [m.id for m in ready[q][: len(taken)]], (q, taken)
        for job in got:
            self._leased(job, node, now + timeout_s)

    def _leased(self, job: JobRecord, node: str, expires_at: float) -> None:
        m = self.jobs[job.id]
        m.state, m.lease_expires_at = "active", expires_at
        m.attempt += 1
        m.counted += 1
        assert (job.state, job.attempt, job.lease_node) == ("active", m.attempt, node)
        assert job.args == m.args
        assert job.lease_expires_at == expires_at

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=_picks, delta=_deltas, hint=st.sampled_from(["none", "right", "wrong"]))
    def ack(self, pick: int, delta: int, hint: str) -> None:
        m = self._pick(pick)
        attempt = m.attempt + delta
        expected = m.fence(attempt)  # whatever queue the ack names
        queue = {"none": None, "right": m.queue, "wrong": "b" if m.queue == "a" else "a"}[hint]
        item = AckItem(m.id, attempt, b"\x01", queue)
        assert self.s.execute(AckJobs((item,))).statuses == (expected,)
        if expected == "ok":
            m.settled = attempt
            m.acks += 1
            m.ended.append("succeeded")
            m.finish("succeeded", self.s.now())

    @precondition(lambda self: bool(self.jobs))
    @rule(
        pick=_picks,
        delta=_deltas,
        outcome=st.sampled_from(["retry", "retry", "dead", "cancelled"]),
        retry_in_s=st.sampled_from([None, 0.0, 3.0]),
    )
    def nack(self, pick: int, delta: int, outcome: str, retry_in_s: float | None) -> None:
        m, now = self._pick(pick), self.s.now()
        attempt = m.attempt + delta
        expected = m.fence(attempt)
        item = NackItem(m.id, attempt, "E", "boom", "tb", retry_in_s, outcome)
        reply = self.s.execute(NackJobs((item,)))
        if expected == "ok":
            m.settled = attempt
            cancel = outcome == "cancelled" or (outcome == "retry" and m.cancel_requested)
            m.ended.append("cancelled" if cancel else "failed")
            if cancel:
                m.finish("cancelled", now)
            elif outcome == "dead" or m.counted >= m.max_attempts:
                m.finish("dead", now)
            else:
                m.state, m.due_at, m.lease_expires_at = PENDING, now + (retry_in_s or 0.0), None
        assert reply.statuses == (expected,)
        actual = reply.states[0]
        assert m.matches(actual, now) if m.state != PURGED else actual == "missing"

    @precondition(lambda self: bool(self.jobs))
    @rule(tokens=st.lists(st.tuples(_picks, _deltas), min_size=1, max_size=3),
          timeout_s=st.sampled_from([5.0, 20.0]), started=st.booleans())  # fmt: skip
    def heartbeat(self, tokens: list[tuple[int, int]], timeout_s: float, started: bool) -> None:
        now, expected, sent = self.s.now(), [], []
        for pick, delta in tokens:
            m = self._pick(pick)
            sent.append(LeaseToken(m.id, m.attempt + delta))
            if m.state == "active" and delta == 0:
                m.lease_expires_at = now + timeout_s
                m.started = m.attempt if started else m.started
                expected.append("cancel" if m.cancel_requested else "ok")
            else:
                expected.append("stale")
        reply = self.s.execute(Heartbeat("n1", tuple(sent), timeout_s, started))
        assert reply.statuses == tuple(expected)

    @precondition(lambda self: bool(self.jobs))
    @rule(picks=st.lists(_picks, min_size=1, max_size=3), missing=st.booleans())
    def cancel(self, picks: list[int], missing: bool) -> None:
        now, ids, expected = self.s.now(), [], []
        for pick in picks:
            m = self._pick(pick)
            if m.state == PENDING:
                m.finish("cancelled", now)
            elif m.state == "active":
                m.cancel_requested = True
            ids.append(m.id)
            expected.append("missing" if m.state == PURGED else m.state)
        if missing:
            ids.append(NO_SUCH_ID)
            expected.append("missing")
        assert self.s.execute(CancelJobs(tuple(ids))).states == tuple(expected)

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=_picks, delta=_deltas)
    def release(self, pick: int, delta: int) -> None:
        m, now = self._pick(pick), self.s.now()
        token = LeaseToken(m.id, m.attempt + delta)
        expected = m.fence(token.attempt)
        if expected == "ok":
            m.counted -= 1
            m.ended.append("released")
            m.hand_back(now)
        assert self.s.execute(ReleaseJobs((token,))).statuses == (expected,)

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=_picks, delta=_deltas, fraction=st.sampled_from([0.0, 0.5, 1.0]))
    def progress(self, pick: int, delta: int, fraction: float) -> None:
        m = self._pick(pick)
        item = ProgressItem(m.id, m.attempt + delta, fraction, "p")
        expected = m.state == "active" and delta == 0
        assert self.s.execute(ReportProgress((item,))).accepted == (expected,)

    @rule(seconds=st.sampled_from([1.0, 2.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.s.advance(seconds)

    @rule(task=st.sampled_from(["requeue", "promote", "purge"]))
    def maintain(self, task: str) -> None:
        """One of the reaper's and scheduler's chores (one rule, so they are not overdrawn)."""
        {"requeue": self._requeue_expired, "promote": self._promote_due,
         "purge": self._purge_expired}[task]()  # fmt: skip

    def _requeue_expired(self) -> None:
        now = self.s.now()
        moved: dict[str, set[str]] = {PENDING: set(), "dead": set(), "cancelled": set()}
        for m in self.jobs.values():
            if m.state == "active" and m.lease_expires_at is not None and m.lease_expires_at <= now:
                m.ended.append(self._expiry(m))
                if m.counted >= m.max_attempts and not m.cancel_requested:
                    m.finish("dead", now)
                else:
                    m.hand_back(now)
                moved[m.state].add(m.id)
        reply = self.s.execute(RequeueExpired(limit=LIMIT_MAX))
        assert set(reply.requeued) == moved[PENDING]
        assert (set(reply.dead), set(reply.cancelled)) == (moved["dead"], moved["cancelled"])

    @staticmethod
    def _expiry(m: _Model) -> str:
        """The outcome of an expired lease; an unstarted one is free `UNSTARTED_FREE_MAX`
        times."""
        if m.started == m.attempt:
            return "node_lost"
        if m.free_expiries < UNSTARTED_FREE_MAX:
            m.free_expiries += 1
            m.counted -= 1
            return "not_started"
        return "lease_expired"

    def _promote_due(self) -> None:
        now = self.s.now()
        due = [m for m in self.jobs.values() if m.state == PENDING and m.due_at <= now]
        assert self.s.execute(PromoteDue(limit=LIMIT_MAX)).promoted <= len(due)
        if due:
            states = self.s.execute(GetJobs(tuple(m.id for m in due))).jobs
            assert all(j is not None and j.state == "queued" for j in states)

    def _purge(self, m: _Model) -> None:
        m.state = PURGED
        if m.key is not None and self.keys.get(m.key) == m.id:
            del self.keys[m.key]

    def _purge_expired(self) -> None:
        now = self.s.now()
        gone = [
            m for m in self.jobs.values()
            if m.state in ("succeeded", "cancelled") and m.expires_at is not None
            and m.expires_at <= now
        ]  # fmt: skip
        assert self.s.execute(PurgeExpired(limit=LIMIT_MAX)).purged == len(gone)
        for m in gone:
            self._purge(m)

    @precondition(lambda self: bool(self.jobs))
    @rule(pick=_picks, everything=st.booleans(), purge=st.booleans())
    def dlq(self, pick: int, everything: bool, purge: bool) -> None:
        """Retry or purge dead jobs: all of them, or one picked job (dead or not)."""
        now = self.s.now()
        targets = list(self.jobs.values()) if everything else [self._pick(pick, "dead")]
        dead = [m for m in targets if m.state == "dead"]
        ids = None if everything else (targets[0].id,)
        if purge:
            assert self.s.execute(PurgeDead(ids)).purged == len(dead)
            for m in dead:
                self._purge(m)
            return
        assert self.s.execute(RetryDead(ids)).requeued == len(dead)
        for m in dead:
            m.state, m.due_at, m.counted, m.expires_at = PENDING, now, 0, None
            m.cancel_requested = False

    @invariant()
    def storage_agrees_with_model(self) -> None:
        if not self.jobs:
            return
        now, models = self.s.now(), list(self.jobs.values())
        records = self.s.execute(GetJobs(tuple(m.id for m in models))).jobs
        for m, job in zip(models, records, strict=True):
            assert (job is None) == (m.state == PURGED), (m, job)
            if job is not None:
                self._check_job(m, job, now)
        tally = Counter((j.queue, j.state) for j in records if j is not None)
        counts = {(c.queue, c.state): c.count for c in self.s.execute(CountJobs()).counts}
        assert counts == dict(tally)

    def _check_job(self, m: _Model, job: JobRecord, now: float) -> None:
        assert job.state in _STORED and m.matches(job.state, now), (m, job)
        assert job.attempt == m.attempt >= self.seen_attempts.get(m.id, 0)
        self.seen_attempts[m.id] = job.attempt
        assert job.attempts_counted == m.counted
        assert (job.cancel_requested, job.settled_attempt) == (m.cancel_requested, m.settled)
        assert m.acks <= 1 and (job.state == "succeeded") == (m.acks == 1)
        if job.state == "active":
            assert job.lease_node is not None and job.leased_at is not None
            assert job.lease_expires_at == m.lease_expires_at
        else:
            assert job.lease_expires_at is None
        if m.state == PENDING:
            assert job.due_at == m.due_at
        else:
            assert job.expires_at == m.expires_at
        assert [a.outcome for a in job.history] == m.ended[-HISTORY_MAX:], (m, job)
        assert job.history_dropped == max(0, len(m.ended) - HISTORY_MAX)
        assert (job.started_attempt, job.unstarted_expiries) == (m.started, m.free_expiries)


def make_state_machine(factory: Callable[[], StorageHarness]) -> type[unittest.TestCase]:
    """Return the stateful test, as a TestCase class, for a backend's harness factory.

    `factory()` must return a fresh, empty harness; one is made per example and closed
    (if it has a `close()`) after it.
    """
    machine: type[_StorageMachine] = type(
        "StorageMachine", (_StorageMachine,), {"harness_factory": staticmethod(factory)}
    )
    case: type[unittest.TestCase] = machine.TestCase
    case.settings = settings(  # type: ignore[attr-defined]
        max_examples=100,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return case
