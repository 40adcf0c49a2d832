"""WorkerCore, synchronously: which job runs, what is cancelled, what is stored and when."""

from __future__ import annotations

import logging
import math

from gotask._job import JobRecord, LeaseToken
from gotask._messages import CancelRunning, Drain, PauseWorkers, RunJobs, SlotsFreed
from gotask.actors._effects import (
    Call,
    Called,
    CallFailed,
    CancelJob,
    Effect,
    JobEvent,
    Log,
    StartJobs,
    Stop,
    Tick,
)
from gotask.actors._worker_core import OutcomesReady, Running, WorkerConfig, WorkerCore
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    AckReply,
    Heartbeat,
    HeartbeatReply,
    NackItem,
    NackJobs,
    ProgressItem,
    ReleaseJobs,
    ReportProgress,
    Status,
)
from gotask.runtime import Address, Envelope, Ok, Respond, Send

STORE = Address("n1", "storage")
DISPATCHER = Address("n1", "dispatcher")


def make(**kw: object) -> WorkerCore:
    """A core at time 0; it stores no starts unless `start_report_s` is given, so the
    tests of other duties see only their own effects."""
    config = WorkerConfig(**{"heartbeat_s": 10.0, "lease_timeout_s": 30.0,  # type: ignore[arg-type]
                             "start_report_s": math.inf, **kw})
    core = WorkerCore("n1", STORE, DISPATCHER, config)
    assert core.deadline() == -math.inf
    assert core.handle(Tick(0.0), 0.0) == []  # arms the first heartbeat
    assert core.deadline() == 10.0
    return core


def job(i: int, attempt: int = 1) -> JobRecord:
    return JobRecord(f"j{i}", "t", "default", b"", 0, "active", 0.0, 0.0, 3, 60.0, attempt)


def ok(record: JobRecord) -> AckItem:
    return AckItem(record.id, record.attempt, b"\xc0", record.queue)


def run_all(core: WorkerCore) -> list[JobRecord]:
    """Start and succeed every ready job, as the shell's workers would."""
    done = []
    while (record := core.next_job()) is not None:
        assert isinstance(core.start(record), Running)
        core.finished(record, ok(record))
        done.append(record)
    return done


def only_call(effects: list[Effect]) -> Call:
    calls = [e for e in effects if isinstance(e, Call)]
    assert len(calls) == 1, effects
    return calls[0]


def test_leased_jobs_wait_in_order_and_wake_workers() -> None:
    core = make()
    assert core.handle(RunJobs((job(1), job(2))), 1.0) == [StartJobs(2)]
    assert [core.next_job(), core.next_job(), core.next_job()] == [job(1), job(2), None]


def test_outcomes_wake_the_core_once_and_are_flushed_in_one_group() -> None:
    core = make()
    core.handle(RunJobs((job(1), job(2))), 1.0)
    first, second = core.next_job(), core.next_job()
    assert first is not None and second is not None
    assert isinstance(core.start(first), Running) and isinstance(core.start(second), Running)
    assert core.finished(first, ok(first)) is True
    assert core.finished(second, ok(second)) is False  # the core is woken already
    call = only_call(core.handle(OutcomesReady(), 1.1))
    assert call.dst == STORE and call.msg == AckJobs((ok(first), ok(second)))
    assert core.tokens() == [first.token, second.token]  # stored only once answered
    effects = core.handle(Called(call.tag, AckReply((Status.OK, Status.OK))), 1.2)
    assert effects == [Send(DISPATCHER, SlotsFreed(2))]
    assert core.tokens() == []


def test_one_group_at_storage_at_a_time_with_one_flusher() -> None:
    core = make(flushers=1)
    core.handle(RunJobs((job(1),)), 1.0)
    run_all(core)
    call = only_call(core.handle(OutcomesReady(), 1.1))
    core.handle(RunJobs((job(2), job(3))), 1.2)
    run_all(core)
    assert core.deadline() == 10.0  # buffered, but the flusher is busy: no tick wanted
    assert core.handle(OutcomesReady(), 1.3) == []
    effects = core.handle(Called(call.tag, None), 1.4)
    assert effects[0] == Send(DISPATCHER, SlotsFreed(1))
    assert only_call(effects).msg == AckJobs((ok(job(2)), ok(job(3))))


def test_a_group_stores_progress_then_outcomes_one_command_after_another() -> None:
    core = make()
    core.handle(RunJobs((job(1), job(2))), 1.0)
    record = core.next_job()
    assert record is not None and isinstance(core.start(record), Running)
    assert core.reported(ProgressItem("j1", 1, 0.5, "half")) is True
    failed = NackItem("j1", 1, "E", "boom", "tb")
    core.finished(record, failed)
    progress = only_call(core.handle(OutcomesReady(), 1.1))
    assert progress.msg == ReportProgress((ProgressItem("j1", 1, 0.5, "half"),))
    nacks = only_call(core.handle(Called(progress.tag, None), 1.2))
    assert nacks.msg == NackJobs((failed,))
    assert core.handle(Called(nacks.tag, None), 1.3) == [Send(DISPATCHER, SlotsFreed(1))]


def test_progress_of_a_job_not_running_is_ignored() -> None:
    core = make()
    assert core.reported(ProgressItem("nope", 1, 0.5)) is False
    assert core.deadline() == 10.0


def test_heartbeat_extends_running_and_unstored_leases_every_period() -> None:
    core = make()
    core.handle(RunJobs((job(1), job(2))), 1.0)
    record = core.next_job()
    assert record is not None
    core.start(record)
    core.finished(record, ok(record))
    store = only_call(core.handle(OutcomesReady(), 1.1))
    assert core.handle(Tick(9.0), 9.0) == []
    beat = only_call(core.handle(Tick(10.0), 10.0))
    assert beat.msg == Heartbeat("n1", (job(2).token, job(1).token), 30.0)
    assert beat.timeout_s == 10.0
    assert core.deadline() == math.inf  # heartbeat in flight, nothing else due
    assert core.handle(Called(beat.tag, HeartbeatReply((Status.OK, Status.OK), 40.0)), 10.1) == []
    assert core.deadline() == 20.0
    core.handle(Called(store.tag, None), 10.2)
    assert core.tokens() == [job(2).token]


def test_stale_and_cancel_answers_cancel_the_job() -> None:
    core = make()
    core.handle(RunJobs((job(1), job(2), job(3))), 1.0)
    started = core.next_job()
    assert started is not None and isinstance(core.start(started), Running)
    beat = only_call(core.handle(Tick(10.0), 10.0))
    reply = HeartbeatReply((Status.STALE, Status.CANCEL, Status.OK), 40.0)
    effects = core.handle(Called(beat.tag, reply), 10.1)
    assert effects == [CancelJob("j1", 1), CancelJob("j2", 1)]
    not_started = core.next_job()
    assert not_started == job(2)
    nack = core.start(not_started)
    assert isinstance(nack, NackItem) and nack.outcome == "cancelled"
    assert core.running["j1"].stale
    core.finished(started, None)  # a stale attempt is never settled
    assert core.acks == [] and core.nacks == [] and core.dropped == 1


def test_cancel_running_cancels_cooperatively() -> None:
    core = make()
    core.handle(RunJobs((job(1),)), 1.0)
    effects = core.handle(CancelRunning((LeaseToken("j1", 1), LeaseToken("j9", 1))), 1.1)
    assert effects == [CancelJob("j1", 1)]
    assert core.running["j1"].cancel_requested


def test_a_new_lease_of_a_running_job_makes_the_old_attempt_stale() -> None:
    core = make()
    core.handle(RunJobs((job(1),)), 1.0)
    old = core.next_job()
    assert old is not None and isinstance(core.start(old), Running)
    effects = core.handle(RunJobs((job(1, attempt=2),)), 50.0)
    assert effects == [CancelJob("j1", 1), StartJobs(1)]
    core.finished(old, None)
    assert "j1" in core.running  # the new attempt is untouched
    new = core.next_job()
    assert new is not None and isinstance(core.start(new), Running)


def test_a_failed_store_is_retried_after_backoff_and_never_dropped() -> None:
    core = make(retry_backoff_s=0.5)
    core.handle(RunJobs((job(1),)), 1.0)
    run_all(core)
    call = only_call(core.handle(OutcomesReady(), 1.1))
    effects = core.handle(CallFailed(call.tag, "CallTimeout", "slow", False, 1.2), 2.0)
    assert len(effects) == 1 and isinstance(effects[0], Log)
    assert core.deadline() == 2.6
    assert core.handle(Tick(2.5), 2.5) == []
    again = only_call(core.handle(Tick(2.6), 2.6))
    assert again == call
    assert core.handle(Called(again.tag, None), 2.7) == [Send(DISPATCHER, SlotsFreed(1))]


def test_a_store_storage_rejects_is_logged_and_its_slots_freed() -> None:
    core = make()
    core.handle(RunJobs((job(1),)), 1.0)
    run_all(core)
    call = only_call(core.handle(OutcomesReady(), 1.1))
    effects = core.handle(CallFailed(call.tag, "ValueError", "bad", True), 1.2)
    assert isinstance(effects[0], Log) and effects[0].level == logging.ERROR
    assert effects[1:] == [Send(DISPATCHER, SlotsFreed(1))]


def test_large_outcomes_go_in_several_commands() -> None:
    core = make()
    records = tuple(job(i) for i in range(5))
    core.handle(RunJobs(records), 1.0)
    while (record := core.next_job()) is not None:
        core.start(record)
        core.finished(record, AckItem(record.id, 1, b"r" * 250_000))
    call = only_call(core.handle(OutcomesReady(), 1.1))
    sizes = []
    while isinstance(call.msg, AckJobs):
        sizes.append(len(call.msg.items))
        effects = core.handle(Called(call.tag, None), 1.2)
        calls = [e for e in effects if isinstance(e, Call)]
        if not calls:
            assert effects == [Send(DISPATCHER, SlotsFreed(5))]
            break
        call = calls[0]
    assert sum(sizes) == 5 and len(sizes) > 1


def request(msg: object) -> Envelope:
    return Envelope(Address("n1", "workers"), Address("n1", "$call"), 3, msg)


def test_drain_releases_waiting_jobs_lets_running_ones_finish_then_stops() -> None:
    core = make()
    core.handle(RunJobs((job(1), job(2))), 1.0)
    running = core.next_job()
    assert running is not None and isinstance(core.start(running), Running)
    drain = request(Drain(5.0))
    effects = core.handle(Drain(5.0), 2.0, drain)
    pause, release = [e for e in effects if isinstance(e, Call)]
    assert pause.dst == DISPATCHER and pause.msg == PauseWorkers(True)
    assert release.msg == ReleaseJobs((job(2).token,))
    assert core.next_job() is None
    core.handle(Called(pause.tag, Ok()), 2.1)
    assert core.handle(Called(release.tag, None), 2.2) == [
        released(job(2)), Send(DISPATCHER, SlotsFreed(1))]
    core.finished(running, ok(running))
    ack = only_call(core.handle(OutcomesReady(), 3.0))
    assert ack.msg == AckJobs((ok(running),))
    effects = core.handle(Called(ack.tag, None), 3.1)
    assert effects == [Send(DISPATCHER, SlotsFreed(1)), drained(1), Respond(drain, Ok()), Stop()]


def released(record: JobRecord) -> JobEvent:
    return JobEvent("released", record.id, record.attempt, record.task, record.queue,
                    "lease given back; the attempt does not count")


def drained(count: int) -> Log:
    return Log(logging.INFO, f"drained: released {count} jobs")


def test_drain_cancels_what_still_runs_after_the_grace_and_releases_it() -> None:
    core = make()
    core.handle(RunJobs((job(1),)), 1.0)
    running = core.next_job()
    assert running is not None and isinstance(core.start(running), Running)
    drain = request(Drain(5.0))
    pause = only_call(core.handle(Drain(5.0), 2.0, drain))
    assert core.handle(Called(pause.tag, Ok()), 2.1) == []  # a job still runs
    assert core.deadline() == 7.0
    assert core.handle(Tick(7.0), 7.0) == [CancelJob("j1", 1)]
    core.finished(running, None)  # the shell saw the cancellation
    release = only_call(core.handle(OutcomesReady(), 7.1))
    assert release.msg == ReleaseJobs((running.token,))
    effects = core.handle(Called(release.tag, None), 7.2)
    assert effects == [released(running), Send(DISPATCHER, SlotsFreed(1)), drained(1),
                       Respond(drain, Ok()), Stop()]


def test_a_second_drain_cuts_the_grace_period_and_both_are_answered() -> None:
    core = make()
    core.handle(RunJobs((job(1),)), 1.0)
    running = core.next_job()
    assert running is not None and isinstance(core.start(running), Running)
    first, second = request(Drain(30.0)), request(Drain(0.0))
    pause = only_call(core.handle(Drain(30.0), 2.0, first))
    core.handle(Called(pause.tag, Ok()), 2.1)
    assert core.handle(Drain(0.0), 3.0, second) == [CancelJob("j1", 1)]
    assert core.handle(Drain(60.0), 3.1) == []  # a later, longer one changes nothing
    core.finished(running, None)
    release = only_call(core.handle(OutcomesReady(), 3.2))
    effects = core.handle(Called(release.tag, None), 3.3)
    assert effects[-4:] == [drained(1), Respond(first, Ok()), Respond(second, Ok()), Stop()]


def test_leases_arriving_during_a_drain_are_given_back_at_once() -> None:
    core = make()
    pause = only_call(core.handle(Drain(5.0), 1.0, request(Drain(5.0))))
    effects = core.handle(RunJobs((job(4),)), 1.1)
    release = only_call(effects)
    assert release.msg == ReleaseJobs((job(4).token,))
    assert core.next_job() is None
    core.handle(Called(release.tag, None), 1.2)
    effects = core.handle(Called(pause.tag, Ok()), 1.3)
    assert effects[0] == drained(1)
    assert isinstance(effects[1], Respond) and effects[-1] == Stop()


def test_a_failed_pause_still_lets_the_drain_finish() -> None:
    core = make()
    pause = only_call(core.handle(Drain(5.0), 1.0, request(Drain(5.0))))
    effects = core.handle(CallFailed(pause.tag, "CallTimeout", "slow", False), 1.1)
    assert isinstance(effects[0], Log) and effects[-1] == Stop()


def test_answers_to_calls_of_an_earlier_life_are_ignored() -> None:
    core = make()
    assert core.handle(Called("old", None), 1.0) == []
    assert core.handle(CallFailed("old", "E", "e", True), 1.0) == []


def test_a_tick_always_moves_the_deadline_past_now() -> None:
    core = make()
    now = 0.0
    core.handle(RunJobs(tuple(job(i) for i in range(4))), now)
    for step in range(40):
        now = step * 0.5
        record = core.next_job()
        if record is not None:
            core.start(record)
            core.finished(record, ok(record))
        for effect in core.handle(Tick(now), now):
            if isinstance(effect, Call):
                core.handle(Called(effect.tag, None), now)
        assert core.deadline() > now


def test_outcomes_after_a_flush_wake_the_core_again() -> None:
    core = make(flushers=1)
    core.handle(RunJobs((job(1), job(2))), 1.0)
    first = core.next_job()
    assert first is not None
    core.start(first)
    assert core.finished(first, ok(first)) is True
    # The wake-up could not be sent (a full inbox); the core flushes on a later tick.
    call = only_call(core.handle(Tick(1.1), 1.1))
    second = core.next_job()
    assert second is not None
    core.start(second)
    assert core.finished(second, ok(second)) is False  # a group is at storage
    again = only_call(core.handle(Called(call.tag, None), 1.2))  # flushes the second
    core.handle(RunJobs((job(3),)), 1.3)
    third = core.next_job()
    assert third is not None
    core.start(third)
    assert core.finished(third, ok(third)) is False  # the flusher is busy again
    last = only_call(core.handle(Called(again.tag, None), 1.4))  # the third goes at once
    assert last.msg == AckJobs((ok(third),))
    core.handle(Called(last.tag, None), 1.45)
    core.handle(RunJobs((job(4),)), 1.5)
    fourth = core.next_job()
    assert fourth is not None
    core.start(fourth)
    assert core.finished(fourth, ok(fourth)) is True


def test_starts_of_running_jobs_are_stored_in_one_batch_per_period() -> None:
    core = make(start_report_s=1.0)
    core.handle(RunJobs((job(1), job(2), job(3))), 0.5)
    assert core.deadline() == 1.0  # jobs run: the next start report is due
    for _ in range(2):
        record = core.next_job()
        assert record is not None and isinstance(core.start(record), Running)
    assert core.next_job() is not None  # j3 was taken but never started
    report = only_call(core.handle(Tick(1.0), 1.0))
    tokens = (job(1).token, job(2).token)
    assert report.msg == Heartbeat("n1", tokens, 30.0, started=True)
    assert core.handle(Tick(2.0), 2.0) == []  # each start is stored once
    assert core.handle(Called(report.tag, HeartbeatReply((Status.OK, Status.STALE), 40.0)),
                       2.1) == [CancelJob("j2", 1)]


def test_a_job_that_ends_before_the_report_costs_no_start_write() -> None:
    core = make(start_report_s=1.0)
    core.handle(RunJobs((job(1),)), 0.5)
    assert len(run_all(core)) == 1
    only_call(core.handle(OutcomesReady(), 0.6))  # the ack
    assert core.handle(Tick(1.0), 1.0) == []


def test_a_failed_start_report_is_sent_again() -> None:
    core = make(start_report_s=1.0)
    core.handle(RunJobs((job(1),)), 0.5)
    record = core.next_job()
    assert record is not None and isinstance(core.start(record), Running)
    report = only_call(core.handle(Tick(1.0), 1.0))
    failed = CallFailed(report.tag, "CallTimeout", "no answer", remote=False, jitter=1.0)
    core.handle(failed, 2.0)
    again = only_call(core.handle(Tick(3.0), 3.0))
    assert again.msg == report.msg
