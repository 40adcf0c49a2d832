"""The Broker's pure core, without trio: feed events, assert effects."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest

from gotask import _protocol as proto
from gotask._app import App, pack_args
from gotask._errors import ActorNotFound, CallTimeout, RemoteProtocolError, TaskNotFound
from gotask._job import JobRecord, NewJob
from gotask._job_metrics import JobsEnqueued
from gotask._messages import JobChanged, PauseWorkers
from gotask._messages import UnwatchJobs as StorageUnwatch
from gotask._messages import WatchJobs as StorageWatch
from gotask.actors import _broker_core
from gotask.actors._broker_core import BrokerCore
from gotask.actors._broker_effects import (
    Answer,
    Call,
    CallDone,
    CallFailed,
    Effect,
    Flush,
    Lane,
    Push,
    PushFailed,
    Received,
    Refuse,
    Target,
    Tell,
    Tick,
)
from gotask.actors.storage import base as storage
from gotask.runtime.message import Address, Envelope, Ok

SELF = Address("n1", "broker")
CLIENT = Address("c1", "$call")
WATCHER = Address("c1", "watch")
OTHER_WATCHER = Address("c2", "watch")

app = App("core-tests")


@app.task(name="add", queue="math", priority=3, max_attempts=7, timeout_s=30.0)
def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture
def core() -> BrokerCore:
    ids = itertools.count(1)
    return BrokerCore(app, SELF, lambda: f"id{next(ids)}")


_corr = itertools.count(1)


def request(msg: object) -> Envelope:
    return Envelope(SELF, CLIENT, next(_corr), msg)


def receive(core: BrokerCore, msg: object, now: float = 0.0) -> tuple[Envelope, list[Effect]]:
    env = request(msg)
    return env, core.handle(Received(env), now)


def spec(*args: Any, **options: Any) -> proto.JobSpec:
    return proto.JobSpec("add", pack_args(args), **options)


def record(job_id: str, state: str = "queued", **fields: Any) -> JobRecord:
    return JobRecord(job_id, "add", "math", pack_args([1, 2]), 0, state, 1.0, 1.0, 3, 60.0,
                     **fields)


def only_call(effects: list[Effect]) -> Call:
    (call,) = effects
    assert isinstance(call, Call)
    return call


# -- enqueue -------------------------------------------------------------------------------


def test_enqueues_of_one_batch_go_to_storage_in_one_call_with_task_defaults(
        core: BrokerCore) -> None:
    first, effects = receive(core, proto.Enqueue((spec(1, 2), spec(3, 4, priority=9))))
    assert effects == []  # nothing leaves before the batch ends
    second, effects = receive(core, proto.Enqueue((spec(5, 6, queue="q2"),)))
    assert effects == []
    call = only_call(core.handle(Flush(), 0.0))
    assert (call.target, call.lane) == (Target.STORAGE, Lane.ENQUEUE)
    assert call.msg == storage.EnqueueJobs((
        NewJob("id1", "add", "math", pack_args([1, 2]), 3, 0.0, 7, 30.0, 86_400.0, None),
        NewJob("id2", "add", "math", pack_args([3, 4]), 9, 0.0, 7, 30.0, 86_400.0, None),
        NewJob("id3", "add", "q2", pack_args([5, 6]), 3, 0.0, 7, 30.0, 86_400.0, None),
    ))
    answered = core.handle(CallDone(call.key, storage.EnqueueReply(
        ("id1", "old", "id3"), (True, False, True))), 1.0)
    assert answered == [
        Answer(first, proto.EnqueueReply(("id1", "old"), (True, False))),
        Answer(second, proto.EnqueueReply(("id3",), (True,))),
        # The metric event: what went to storage, and which of it was stored.
        JobsEnqueued(call.msg.jobs, (True, False, True)),
    ]
    assert core.calls_in_flight == 0


def test_a_refused_job_refuses_its_request_whole_and_the_others_proceed(
        core: BrokerCore) -> None:
    unknown = proto.JobSpec("nope", b"\x92\x90\x80")
    bad, effects = receive(core, proto.Enqueue((spec(1, 2), unknown)))
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and refusal.request == bad
    assert isinstance(refusal.error, TaskNotFound) and str(refusal.error).startswith("item 1: ")
    _, effects = receive(core, proto.Enqueue((spec(1),)))  # add() needs two arguments
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and "item 0: " in str(refusal.error)
    receive(core, proto.Enqueue((spec(1, 2),)))
    call = only_call(core.handle(Flush(), 0.0))
    assert isinstance(call.msg, storage.EnqueueJobs) and len(call.msg.jobs) == 1


def test_a_failed_enqueue_call_refuses_every_request_it_carried(core: BrokerCore) -> None:
    first, _ = receive(core, proto.Enqueue((spec(1, 2),)))
    second, _ = receive(core, proto.Enqueue((spec(3, 4),)))
    call = only_call(core.handle(Flush(), 0.0))
    error = CallTimeout("storage is slow")
    assert core.handle(CallFailed(call.key, error), 10.0) == [
        Refuse(first, error), Refuse(second, error)]


def test_flush_splits_at_storage_batch_limit_without_splitting_a_request(
        core: BrokerCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_broker_core, "BATCH_MAX", 3)
    receive(core, proto.Enqueue((spec(1, 2), spec(1, 2))))
    receive(core, proto.Enqueue((spec(1, 2), spec(1, 2))))
    receive(core, proto.Enqueue((spec(1, 2),)))
    calls = core.handle(Flush(), 0.0)
    sizes = [len(c.msg.jobs) for c in calls if isinstance(c, Call)
             and isinstance(c.msg, storage.EnqueueJobs)]
    assert sizes == [2, 3]
    assert core.handle(Flush(), 0.0) == []


# -- forwarded requests --------------------------------------------------------------------


def test_reads_are_translated_both_ways_and_answered_in_any_order(core: BrokerCore) -> None:
    slow, effects = receive(core, proto.ListJobs(queue="q", limit=5, cursor="id9"))
    slow_call = only_call(effects)
    assert slow_call.msg == storage.ListJobs("q", None, 5, "id9")
    fast, effects = receive(core, proto.GetJobs(("id1",)))
    fast_call = only_call(effects)
    assert fast_call.msg == storage.GetJobs(("id1",))
    # The second call is answered while the first is still at storage.
    job = record("id1")
    assert core.handle(CallDone(fast_call.key, storage.GetJobsReply((job,))), 1.0) == [
        Answer(fast, proto.JobsReply((job,)))]
    page = core.handle(CallDone(slow_call.key, storage.ListJobsReply((job,), "id1")), 2.0)
    assert page == [Answer(slow, proto.JobPage((job,), "id1"))]


@pytest.mark.parametrize(
    ("request_msg", "command", "reply", "answer"),
    [
        (proto.CancelJobs(("a",)), storage.CancelJobs(("a",)), storage.CancelReply(("active",)),
         proto.CancelReply(("active",))),
        (proto.ListDead(limit=2), storage.ListDead(None, 2, None),
         storage.ListDeadReply((), None), proto.JobPage((), None)),
        (proto.RetryDead(None), storage.RetryDead(None), storage.RetryDeadReply(4),
         proto.CountReply(4)),
        (proto.PurgeDead(("a",)), storage.PurgeDead(("a",)), storage.PurgeDeadReply(1),
         proto.CountReply(1)),
        (proto.ListNodes(), storage.ListNodes(),
         storage.ListNodesReply((storage.NodeInfo("n1", {"pid": 1}, 1.0, 2.0, 3.0),)),
         proto.NodesReply((proto.NodeInfo("n1", {"pid": 1}, 1.0, 2.0, 3.0),))),
    ],
)
def test_each_forwarded_request_maps_onto_storage_and_back(
        core: BrokerCore, request_msg: object, command: object, reply: object,
        answer: object) -> None:
    env, effects = receive(core, request_msg)
    call = only_call(effects)
    assert call.msg == command
    assert core.handle(CallDone(call.key, reply), 0.0) == [Answer(env, answer)]


def test_count_queues_joins_the_counts_with_the_paused_queues(core: BrokerCore) -> None:
    env, effects = receive(core, proto.CountQueues())
    call = only_call(effects)
    assert call.msg == storage.CountJobs()
    counted = storage.CountJobsReply((storage.QueueCount("q", "queued", 2),))
    info = only_call(core.handle(CallDone(call.key, counted), 0.0))
    assert info.msg == storage.QueueInfo()
    info_reply = storage.QueueInfoReply(5.0, ("idle", "q"), (
        storage.QueueReadySince("q", 1.5), storage.QueueReadySince("skewed", 6.0)))
    answer = core.handle(CallDone(info.key, info_reply), 0.0)
    ages = (proto.QueueAge("q", 3.5), proto.QueueAge("skewed", 0.0))
    assert answer == [Answer(env, proto.QueuesReply((proto.QueueCount("q", "queued", 2),),
                                                    ("idle", "q"), ages))]


def test_pause_queue_is_stored_cluster_wide(core: BrokerCore) -> None:
    env, effects = receive(core, proto.PauseQueue("mail", True))
    call = only_call(effects)
    assert (call.target, call.msg) == (Target.STORAGE, storage.SetQueuePaused("mail", True))
    reply = storage.SetQueuePausedReply(("mail",))
    assert core.handle(CallDone(call.key, reply), 0.0) == [Answer(env, Ok())]
    env, effects = receive(core, proto.PauseQueue("mail", False))
    (refusal,) = core.handle(CallDone(only_call(effects).key, Ok()), 0.0)
    assert isinstance(refusal, Refuse) and isinstance(refusal.error, RemoteProtocolError)


@pytest.mark.parametrize("request_msg", [proto.CountQueues(), proto.PauseQueue("q", True)])
def test_queue_requests_fail_with_their_storage_call(core: BrokerCore,
                                                    request_msg: object) -> None:
    env, effects = receive(core, request_msg)
    error = ValueError("storage said no")
    assert core.handle(CallFailed(only_call(effects).key, error), 0.0) == [Refuse(env, error)]


def test_a_storage_reply_of_the_wrong_kind_is_refused_not_relayed(core: BrokerCore) -> None:
    env, effects = receive(core, proto.GetJobs(("a",)))
    (refusal,) = core.handle(CallDone(only_call(effects).key, Ok()), 0.0)
    assert isinstance(refusal, Refuse) and refusal.request == env
    assert isinstance(refusal.error, RemoteProtocolError)


def test_an_unknown_request_is_refused_naming_its_type(core: BrokerCore) -> None:
    env, effects = receive(core, storage.AckJobs(()))
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and refusal.request == env
    assert isinstance(refusal.error, TypeError)
    assert str(refusal.error) == "the broker does not accept AckJobs"


def test_pause_goes_to_the_dispatcher_or_is_refused_without_one(core: BrokerCore) -> None:
    env, effects = receive(core, proto.PauseWorkers(True))
    call = only_call(effects)
    assert (call.target, call.msg) == (Target.DISPATCHER, PauseWorkers(True))
    assert core.handle(CallDone(call.key, Ok()), 0.0) == [Answer(env, Ok())]
    alone = BrokerCore(app, SELF, lambda: "x", has_dispatcher=False)
    _, effects = receive(alone, proto.PauseWorkers(False))
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and isinstance(refusal.error, ActorNotFound)


# -- watches -------------------------------------------------------------------------------


def test_a_watch_is_answered_and_changes_are_pushed_until_terminal(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WatchJobs(("a",), WATCHER))
    call = only_call(effects)
    assert call.msg == StorageWatch(("a",), SELF)
    assert core.handle(CallDone(call.key, storage.GetJobsReply((record("a"),))), 0.0) == [
        Answer(env, proto.JobsReply((record("a"),)))]
    active = record("a", "active")
    assert core.handle(Received(request(JobChanged(active))), 0.0) == [
        Push(WATCHER, JobChanged(active))]
    done = record("a", "succeeded")
    assert core.handle(Received(request(JobChanged(done))), 0.0) == [
        Push(WATCHER, JobChanged(done))]
    assert "a" not in core.book  # storage ended its watch of the finished job too
    assert core.handle(Received(request(JobChanged(active))), 0.0) == [
        Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]


def test_a_failed_watch_leaves_no_watcher_registered(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WatchJobs(("a", "b"), WATCHER))
    call = only_call(effects)
    error = CallTimeout("storage is slow")
    assert core.handle(CallFailed(call.key, error), 10.0) == [
        Refuse(env, error), Tell(Target.STORAGE, StorageUnwatch(("a", "b"), SELF))]
    assert len(core.book) == 0
    assert core.handle(Received(request(JobChanged(record("a", "active")))), 11.0) == [
        Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]


def test_a_failed_watch_keeps_the_other_watchers_of_the_job(core: BrokerCore) -> None:
    _, effects = receive(core, proto.WatchJobs(("a",), OTHER_WATCHER))
    core.handle(CallDone(only_call(effects).key, storage.GetJobsReply((record("a"),))), 0.0)
    env, effects = receive(core, proto.WatchJobs(("a",), WATCHER))
    error = CallTimeout("slow")
    assert core.handle(CallFailed(only_call(effects).key, error), 1.0) == [Refuse(env, error)]
    assert core.book.watchers("a") == {OTHER_WATCHER}


def test_watching_a_finished_or_missing_job_registers_nothing(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WatchJobs(("done", "gone"), WATCHER))
    reply = storage.GetJobsReply((record("done", "dead"), None))
    assert core.handle(CallDone(only_call(effects).key, reply), 0.0) == [
        Answer(env, proto.JobsReply(reply.jobs)),
        Tell(Target.STORAGE, StorageUnwatch(("done", "gone"), SELF))]
    assert len(core.book) == 0


def test_unwatch_and_a_lost_watcher_end_the_watch_at_storage_when_nobody_is_left(
        core: BrokerCore) -> None:
    for watcher in (WATCHER, OTHER_WATCHER):
        _, effects = receive(core, proto.WatchJobs(("a",), watcher))
        core.handle(CallDone(only_call(effects).key, storage.GetJobsReply((record("a"),))), 0.0)
    env, effects = receive(core, proto.UnwatchJobs(("a",), WATCHER))
    assert effects == [Answer(env, Ok())]
    assert core.handle(PushFailed(OTHER_WATCHER), 0.0) == [
        Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]


def test_watches_are_bounded_per_watcher(core: BrokerCore) -> None:
    core.book = attrs.evolve(core.book, per_watcher_max=2)
    _, effects = receive(core, proto.WatchJobs(("a", "b", "c"), WATCHER))
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and "too many watched jobs" in str(refusal.error)


# -- waits ---------------------------------------------------------------------------------


def test_a_wait_is_answered_when_every_job_is_terminal_or_missing(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WaitJobs(("a", "gone"), 30.0), now=100.0)
    call = only_call(effects)
    snapshot = storage.GetJobsReply((record("a", "active"), None))
    assert core.handle(CallDone(call.key, snapshot), 100.5) == []
    assert core.next_deadline() == 130.0
    done = record("a", "succeeded")
    assert core.handle(Received(request(JobChanged(done))), 101.0) == [
        Answer(env, proto.JobsReply((done, None)))]
    assert (core.waiters, core.next_deadline()) == (0, None)


def test_a_change_pushed_before_the_snapshot_is_not_missed(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WaitJobs(("a",), 30.0))
    call = only_call(effects)
    done = record("a", "succeeded")
    # Storage registered the watch, pushed the change, and its (older) snapshot comes last.
    assert core.handle(Received(request(JobChanged(done))), 0.1) == [
        Answer(env, proto.JobsReply((done,)))]
    assert core.handle(CallDone(call.key, storage.GetJobsReply((record("a"),))), 0.2) == []


def test_a_wait_times_out_with_the_records_as_they_are(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WaitJobs(("a",), 5.0), now=10.0)
    core.handle(CallDone(only_call(effects).key, storage.GetJobsReply((record("a"),))), 10.0)
    assert core.handle(Tick(), 14.9) == []
    assert core.handle(Tick(), 15.0) == [
        Answer(env, proto.JobsReply((record("a"),))),
        Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]


def test_a_wait_overdue_before_its_snapshot_is_answered_with_the_snapshot(
        core: BrokerCore) -> None:
    env, effects = receive(core, proto.WaitJobs(("a",), 0.0), now=10.0)
    assert core.handle(Tick(), 10.0) == []
    snapshot = storage.GetJobsReply((record("a"),))
    assert core.handle(CallDone(only_call(effects).key, snapshot), 11.0) == [
        Answer(env, proto.JobsReply((record("a"),))),
        Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]


def test_a_failed_wait_is_refused_and_forgotten(core: BrokerCore) -> None:
    env, effects = receive(core, proto.WaitJobs(("a",), 5.0))
    error = CallTimeout("slow")
    assert core.handle(CallFailed(only_call(effects).key, error), 1.0) == [
        Refuse(env, error), Tell(Target.STORAGE, StorageUnwatch(("a",), SELF))]
    assert (core.waiters, core.next_deadline()) == (0, None)


def test_a_job_a_client_still_watches_is_not_unwatched_when_a_wait_ends(
        core: BrokerCore) -> None:
    _, effects = receive(core, proto.WatchJobs(("a",), WATCHER))
    core.handle(CallDone(only_call(effects).key, storage.GetJobsReply((record("a"),))), 0.0)
    env, effects = receive(core, proto.WaitJobs(("a",), 1.0))
    core.handle(CallDone(only_call(effects).key, storage.GetJobsReply((record("a"),))), 0.0)
    assert core.handle(Tick(), 1.0) == [Answer(env, proto.JobsReply((record("a"),)))]


def test_waits_are_bounded(core: BrokerCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_broker_core, "WAITERS_MAX", 1)
    receive(core, proto.WaitJobs(("a",), 5.0))
    _, effects = receive(core, proto.WaitJobs(("b",), 5.0))
    (refusal,) = effects
    assert isinstance(refusal, Refuse) and "too many waiting requests" in str(refusal.error)
