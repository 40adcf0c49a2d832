"""The storage shell's pure core, driven synchronously over a real memory core."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gotask._errors import StorageUnavailable
from gotask._job import LeaseToken, NewJob
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
from gotask.actors.storage._backend import (
    LEASE_REPLY_BYTES_MAX,
    InlineBackend,
    StorageEvents,
    WatchRead,
)
from gotask.actors.storage._shell_core import (
    Answer,
    Batch,
    Effect,
    Push,
    Refuse,
    StorageShellCore,
)
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    CancelJobs,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    GetJobsReply,
    LeaseJobs,
    LeaseReply,
    NackItem,
    NackJobs,
    QueueWeight,
    ReleaseJobs,
    SetQueuePaused,
    SetQueuePausedReply,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import Address, Ok

from .contract import ARGS

NOW = 5000.0  # storage time; local time is 0.0
WATCHER = Address("client", "w")
Core = StorageShellCore[str]


class Untimed:
    """A memory core that does not tell when its next job is due."""

    def __init__(self) -> None:
        self.inner = MemoryStorageCore()

    def handle(self, cmd: Any, now: float) -> Any:
        return self.inner.handle(cmd, now)


class Harness:
    """A shell core over an inline memory backend, one batch per `run`."""

    def __init__(self, *, shared: bool = False, node: str = "n1", timed: bool = True,
                 watchers: WatchBook[Address] | None = None) -> None:
        self.core: Core = StorageShellCore(node, shared=shared, watchers=watchers)
        self.backend = InlineBackend(MemoryStorageCore() if timed else Untimed())
        self.batches: list[Batch[str]] = []

    def run(self, *arrived: tuple[str, Any], mono: float = 0.0) -> list[Effect[str]]:
        batch = self.core.plan(arrived, mono)
        self.batches.append(batch)
        effects = list(batch.effects)
        if batch.cmds:
            results = self.backend.submit(batch.cmds, NOW + mono).results
            effects += self.core.settle(batch, results, mono)
        return effects

    def settle_all(self, *arrived: tuple[str, Any], mono: float = 0.0) -> list[Effect[str]]:
        """`run`, then the batches the core wants at once (follow-ups, refreshes)."""
        effects = self.run(*arrived, mono=mono)
        while self.core.busy():
            effects += self.run(mono=mono)
        return effects


def answers(effects: list[Effect[str]]) -> dict[str, Any]:
    return {e.request: e.reply for e in effects if isinstance(e, Answer)}


def job(queue: str, job_id: str, delay_s: float = 0.0) -> NewJob:
    return NewJob(job_id, "t", queue, ARGS, delay_s=delay_s)


def lease(*queues: str, node: str = "n1") -> LeaseJobs:
    return LeaseJobs(node, tuple(QueueWeight(q) for q in queues), 10, 30.0)


def test_a_command_is_answered_with_its_reply() -> None:
    h = Harness()
    [effect] = h.run(("r1", EnqueueJobs((job("q", "j1"),))))
    assert effect == Answer("r1", EnqueueReply(("j1",), (True,)))


def test_what_is_not_a_storage_message_is_answered_with_an_error() -> None:
    h = Harness()
    effects = h.run(("r1", "hello"), ("r2", LeaseWait(GetJobs(()), 1.0)),
                    ("r3", GetJobs(("nope",))))
    assert isinstance(effects[0], Refuse) and effects[0].request == "r1"
    assert "not a storage command: str" in str(effects[0].error)
    assert isinstance(effects[1], Refuse) and effects[1].request == "r2"
    assert "LeaseWait.lease must be a LeaseJobs" in str(effects[1].error)
    assert answers(effects) == {"r3": GetJobsReply((None,))}


def test_a_failed_command_is_refused_and_an_unexpected_error_raises() -> None:
    h = Harness()
    batch = h.core.plan([("r1", GetJobs(("a",))), ("r2", GetJobs(("b",)))], 0.0)
    down = StorageUnavailable("down")
    assert h.core.settle(batch, [down, GetJobsReply((None,))], 0.0) == [
        Refuse("r1", down), Answer("r2", GetJobsReply((None,)))]
    batch = h.core.plan([("r1", GetJobs(("a",)))], 0.0)
    with pytest.raises(KeyError):
        h.core.settle(batch, [KeyError("bug")], 0.0)


def test_an_idle_lease_parks_and_an_enqueue_relets_it_in_the_same_batch() -> None:
    h = Harness()
    assert h.run(("lw", LeaseWait(lease("q"), 10.0))) == []
    assert h.core.next_wakeup() == 10.0
    effects = h.run(("enq", EnqueueJobs((job("q", "j1"),))), mono=1.0)
    assert [type(cmd) for cmd in h.batches[-1].cmds] == [EnqueueJobs, LeaseJobs]
    reply = answers(effects)["lw"]
    assert [job.id for job in reply.jobs] == ["j1"]


def test_an_enqueue_to_another_queue_or_a_delayed_job_does_not_wake_it() -> None:
    h = Harness()
    h.run(("lw", LeaseWait(lease("q"), 10.0)))
    h.run(("enq", EnqueueJobs((job("other", "o1"), job("q", "d1", delay_s=3.0)))), mono=1.0)
    assert [type(cmd) for cmd in h.batches[-1].cmds] == [EnqueueJobs]
    # The delayed job set the parked lease's timer (storage time runs NOW ahead).
    assert h.core.next_wakeup() == pytest.approx(4.0)
    effects = h.run(mono=4.0)
    assert len(answers(effects)["lw"].jobs) == 1


@pytest.mark.parametrize("shared", [False, True])
def test_resuming_a_queue_relets_its_parked_leases_in_the_same_batch(shared: bool) -> None:
    h = Harness(shared=shared)
    h.run(("p", SetQueuePaused("q", True)), ("enq", EnqueueJobs((job("q", "j1"),))))
    h.run(("lw", LeaseWait(lease("q"), 10.0)), ("lo", LeaseWait(lease("other"), 10.0)))
    assert h.run(("p", SetQueuePaused("other", True)), mono=1.0) == [
        Answer("p", SetQueuePausedReply(("other", "q")))]  # a pause wakes nothing
    effects = h.run(("r", SetQueuePaused("q", False)), mono=2.0)
    assert h.batches[-1].cmds == [SetQueuePaused("q", False), lease("q")]
    assert [j.id for j in answers(effects)["lw"].jobs] == ["j1"]
    assert "lo" not in answers(effects)


@pytest.mark.parametrize("timed", [True, False])
def test_a_nack_to_retry_later_sets_the_parked_leases_timer(timed: bool) -> None:
    h = Harness(timed=timed)
    h.run(("enq", EnqueueJobs((job("q", "j1"),))))
    [leased] = answers(h.run(("l", lease("q"))))["l"].jobs
    h.run(("lw", LeaseWait(lease("q"), 10.0)))
    nack = NackJobs((NackItem("j1", leased.attempt, "E", "boom", "", retry_in_s=2.0),))
    h.run(("n", nack), mono=1.0)
    assert h.core.next_wakeup() == pytest.approx(3.0)
    assert answers(h.run(mono=3.0))["lw"].jobs[0].id == "j1"


def test_a_parked_lease_times_out_empty_and_unpark_answers_it() -> None:
    h = Harness()
    h.run(("lw", LeaseWait(lease("q"), 2.0)))
    assert answers(h.run(mono=2.0)) == {"lw": LeaseReply(())}
    h.run(("lw2", LeaseWait(lease("q", node="n7"), 20.0)))
    assert answers(h.run(("u", Unpark("n7")))) == {"lw2": LeaseReply(()), "u": Ok()}


def test_a_lease_reply_is_cut_to_the_frame_budget_and_the_rest_released() -> None:
    h = Harness()
    args = msgpack.packb([["x" * 200_000], {}])
    jobs = tuple(NewJob(f"j{i}", "t", "q", args) for i in range(10))
    h.run(("enq", EnqueueJobs(jobs)))
    effects = h.settle_all(("lw", LeaseWait(lease("q"), 0.0)))
    kept = answers(effects)["lw"].jobs
    assert 1 <= len(kept) < 10
    assert sum(len(j.args) for j in kept) <= LEASE_REPLY_BYTES_MAX
    release = h.batches[-1].cmds[0]
    assert isinstance(release, ReleaseJobs) and len(release.tokens) == 10 - len(kept)
    rest = h.backend.core.handle(GetJobs(tuple(t.job_id for t in release.tokens)), NOW)
    assert all(j is not None and j.state == "queued" for j in rest.jobs)


def test_watchers_get_each_change_once_until_the_job_is_terminal() -> None:
    h = Harness()
    h.run(("enq", EnqueueJobs((job("q", "j1"),))))
    effects = h.run(("w", WatchJobs(("j1",), WATCHER)))
    assert isinstance(h.batches[-1].cmds[0], WatchRead)
    assert answers(effects)["w"].jobs[0].state == "queued"
    effects = h.settle_all(("l", lease("q")))
    [push] = [e for e in effects if isinstance(e, Push)]
    assert push.dst == WATCHER and isinstance(push.msg, JobChanged)
    assert push.msg.job.state == "active"
    token = answers(effects)["l"].jobs[0].token
    assert not [e for e in h.settle_all(("g", GetJobs(("j1",)))) if isinstance(e, Push)]
    effects = h.settle_all(("a", AckJobs((AckItem(token.job_id, token.attempt, b""),))))
    [push] = [e for e in effects if isinstance(e, Push)]
    assert isinstance(push.msg, JobChanged) and push.msg.job.state == "succeeded"
    assert "j1" not in h.core.book


def test_a_watch_of_a_terminal_or_missing_job_ends_at_once() -> None:
    h = Harness()
    effects = h.run(("w", WatchJobs(("gone",), WATCHER)))
    assert answers(effects)["w"] == GetJobsReply((None,))
    assert len(h.core.book) == 0


def test_a_failed_watch_read_or_a_watch_past_the_bound_registers_nothing() -> None:
    h = Harness(watchers=WatchBook(ids_max=1))
    batch = h.core.plan([("w", WatchJobs(("a",), WATCHER))], 0.0)
    down = StorageUnavailable("down")
    assert h.core.settle(batch, [down], 0.0) == [Refuse("w", down)]
    assert len(h.core.book) == 0
    [refused] = h.run(("w", WatchJobs(("a", "b"), WATCHER)))
    assert isinstance(refused, Refuse) and isinstance(refused.error, ValueError)
    assert len(h.core.book) == 0


def test_a_watcher_that_cannot_be_reached_loses_its_watch() -> None:
    h = Harness()
    h.run(("enq", EnqueueJobs((job("q", "j1"),))))
    h.run(("w", WatchJobs(("j1",), WATCHER)))
    [push] = [e for e in h.settle_all(("l", lease("q"))) if isinstance(e, Push)]
    h.core.lost(push)
    assert "j1" not in h.core.book


def test_unwatch_ends_the_watch() -> None:
    h = Harness()
    h.run(("enq", EnqueueJobs((job("q", "j1"),))))
    h.run(("w", WatchJobs(("j1",), WATCHER)))
    assert answers(h.run(("u", UnwatchJobs(("j1",), WATCHER)))) == {"u": Ok()}
    assert not [e for e in h.settle_all(("l", lease("q"))) if isinstance(e, Push)]


def test_cancelling_a_running_job_tells_its_node_s_workers() -> None:
    h = Harness()
    h.run(("enq", EnqueueJobs((job("q", "j1"), job("q", "j2")))))
    leased = answers(h.run(("l", LeaseJobs("n9", (QueueWeight("q"),), 1, 30.0))))["l"]
    effects = h.settle_all(("c", CancelJobs(("j1", "j2"))))
    assert answers(effects)["c"].states == ("active", "cancelled")
    pushes = [e for e in effects if isinstance(e, Push)]
    assert pushes == [Push(Address("n9", WORKERS), CancelRunning((leased.jobs[0].token,)))]


def test_a_shared_store_wakes_and_refreshes_from_events_only() -> None:
    h = Harness(shared=True)
    h.run(("lw", LeaseWait(lease("q"), 10.0)))
    leased_at = NOW
    h.run(("ev", StorageEvents(now=leased_at - 1.0, ready=frozenset({"q"}))), mono=1.0)
    assert h.batches[-1].cmds == []  # older than the lease: it saw those jobs
    h.run(("ev", StorageEvents(now=leased_at + 1.0, ready=frozenset({"q"}))), mono=1.0)
    assert h.batches[-1].cmds == [lease("q")]


def test_a_shared_store_s_events_carry_cancels_for_this_node_only() -> None:
    h = Harness(shared=True, node="n1")
    events = StorageEvents(now=NOW, cancels=(("j1", "n1", 2), ("j2", "n2", 1)))
    [push] = h.run(("ev", events))
    assert push == Push(Address("n1", WORKERS), CancelRunning((LeaseToken("j1", 2),)))


def test_a_lost_event_stream_refreshes_every_watched_job_and_wakes_every_lease() -> None:
    h = Harness(shared=True)
    h.run(("enq", EnqueueJobs((job("q", "j1"),))))
    h.run(("w", WatchJobs(("j1",), WATCHER)))
    h.run(("lw", LeaseWait(lease("other"), 10.0)))
    h.run(("ev", StorageEvents(resubscribed=True)), mono=1.0)
    assert h.batches[-1].cmds == [lease("other"), GetJobs(("j1",))]

