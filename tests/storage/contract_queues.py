"""The storage contract's queue block (issue 16), run by every backend via `StorageContract`.

A paused queue accepts jobs and lets running ones finish, but none of its jobs is
leased until it is resumed; the paused set is read back with `QueueInfo`.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import pytest

from gotask._job import NewJob
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    Command,
    CountJobs,
    EnqueueJobs,
    Heartbeat,
    LeaseJobs,
    ListJobs,
    PromoteDue,
    QueueCount,
    QueueInfo,
    QueueReadySince,
    QueueWeight,
    SetQueuePaused,
)
from gotask.runtime.world import encode_id

__all__ = ["QueueContract"]

R = TypeVar("R")
_next_id = [20_000_000]


class _Harness(Protocol):
    def execute(self, cmd: Command[R]) -> R: ...
    def advance(self, seconds: float) -> None: ...
    def now(self) -> float: ...


def _enqueue(s: _Harness, queue: str, n: int = 1, delay_s: float = 0.0) -> tuple[str, ...]:
    jobs = []
    for _ in range(n):
        _next_id[0] += 1
        jobs.append(NewJob(id=encode_id(_next_id[0]), task="tests.noop", queue=queue,
                           args=b"\x92\x90\x80", delay_s=delay_s))
    reply = s.execute(EnqueueJobs(tuple(jobs)))
    assert all(reply.created)
    return reply.ids


def _lease(s: _Harness, *queues: str, limit: int = 10) -> list[str]:
    cmd = LeaseJobs("n1", tuple(QueueWeight(q, 1) for q in queues), limit, 30.0)
    return [job.id for job in s.execute(cmd).jobs]


def _pause(s: _Harness, queue: str, paused: bool = True) -> tuple[str, ...]:
    return s.execute(SetQueuePaused(queue, paused)).paused


class QueueContract:
    """Paused queues in storage: set, clear, read, and honoured by every lease."""

    def test_a_paused_queue_is_not_leased_and_resuming_it_is(self, storage: _Harness) -> None:
        ids = _enqueue(storage, "mail", 3)
        assert _pause(storage, "mail") == ("mail",)
        assert _lease(storage, "mail") == []
        assert _pause(storage, "mail", False) == ()
        assert sorted(_lease(storage, "mail")) == sorted(ids)

    def test_enqueue_to_a_paused_queue_is_accepted_and_waits_queued(
            self, storage: _Harness) -> None:
        _pause(storage, "mail")
        _enqueue(storage, "mail", 2)
        assert _lease(storage, "mail") == []
        assert QueueCount("mail", "queued", 2) in storage.execute(CountJobs()).counts

    def test_other_queues_of_the_same_lease_are_leased(self, storage: _Harness) -> None:
        _enqueue(storage, "mail", 2)
        other = _enqueue(storage, "sms", 2)
        _pause(storage, "mail")
        assert sorted(_lease(storage, "mail", "sms")) == sorted(other)
        assert _lease(storage, "mail", "sms") == []

    def test_running_jobs_of_a_paused_queue_finish(self, storage: _Harness) -> None:
        _enqueue(storage, "mail")
        cmd = LeaseJobs("n1", (QueueWeight("mail", 1),), 1, 30.0)
        (job,) = storage.execute(cmd).jobs
        _pause(storage, "mail")
        assert storage.execute(Heartbeat("n1", (job.token,), 30.0)).statuses == ("ok",)
        ack = AckJobs((AckItem(job.id, job.attempt, b"\xc0"),))
        assert storage.execute(ack).statuses == ("ok",)

    def test_due_jobs_of_a_paused_queue_wait(self, storage: _Harness) -> None:
        (job_id,) = _enqueue(storage, "mail", delay_s=5)
        _pause(storage, "mail")
        storage.advance(10)
        storage.execute(PromoteDue())
        assert _lease(storage, "mail") == []
        _pause(storage, "mail", False)
        assert _lease(storage, "mail") == [job_id]

    def test_the_paused_set_is_read_sorted_with_the_storage_time(
            self, storage: _Harness) -> None:
        assert storage.execute(QueueInfo()).paused == ()
        _pause(storage, "zeta")
        _pause(storage, "alpha")
        assert _pause(storage, "alpha") == ("alpha", "zeta")  # pausing twice is harmless
        assert _pause(storage, "nothing-here", False) == ("alpha", "zeta")
        info = storage.execute(QueueInfo())
        assert info.paused == ("alpha", "zeta")  # paused before any job was enqueued
        assert info.now == storage.now()

    def test_jobs_are_listed_by_task_in_id_order_with_other_filters(
            self, storage: _Harness) -> None:
        def job(queue: str, task: str) -> NewJob:
            _next_id[0] += 1
            return NewJob(id=encode_id(_next_id[0]), task=task, queue=queue,
                          args=b"\x92\x90\x80")

        jobs = [job(q, t) for q in ("mail", "sms") for t in ("send", "count", "send")]
        storage.execute(EnqueueJobs(tuple(jobs)))
        sends = sorted(j.id for j in jobs if j.task == "send")
        first = storage.execute(ListJobs(task="send", limit=3))
        assert [j.id for j in first.jobs] == sends[:3] and first.next_after == sends[2]
        rest = storage.execute(ListJobs(task="send", limit=3, after_id=first.next_after))
        assert [j.id for j in rest.jobs] == sends[3:]
        mail = storage.execute(ListJobs(queue="mail", task="count", state="queued"))
        assert [(j.queue, j.task) for j in mail.jobs] == [("mail", "count")]
        assert storage.execute(ListJobs(task="nobody")).jobs == ()

    def test_the_oldest_ready_job_of_each_queue_is_read(self, storage: _Harness) -> None:
        start = storage.now()
        assert storage.execute(QueueInfo()).ready_since == ()
        _enqueue(storage, "mail")  # due at start
        storage.advance(5)
        _pause(storage, "mail")
        _enqueue(storage, "mail")
        _enqueue(storage, "sms", delay_s=3)  # scheduled: not ready yet
        assert storage.execute(QueueInfo()).ready_since == (QueueReadySince("mail", start),)
        storage.advance(10)
        storage.execute(PromoteDue())  # due at start + 8, ready since then
        # A higher priority job enqueued later does not hide the older one.
        storage.execute(EnqueueJobs((NewJob(id=encode_id(_next_id[0] + 1), task="t",
                                            queue="mail", args=b"\x92\x90\x80",
                                            priority=9),)))
        _next_id[0] += 1
        info = storage.execute(QueueInfo())
        assert info.ready_since == (QueueReadySince("mail", start),
                                    QueueReadySince("sms", start + 8))
        _pause(storage, "mail", False)
        assert len(_lease(storage, "mail", limit=2)) == 2  # the priority-9 job and the oldest
        assert storage.execute(QueueInfo()).ready_since == (
            QueueReadySince("mail", start + 5), QueueReadySince("sms", start + 8))
        _lease(storage, "mail", "sms")
        assert storage.execute(QueueInfo()).ready_since == ()

    def test_a_bad_queue_name_is_refused_where_the_command_is_made(self) -> None:
        with pytest.raises(ValueError, match="queue"):
            SetQueuePaused("", True)
        with pytest.raises(ValueError, match="queue"):
            SetQueuePaused("a\nb", True)
