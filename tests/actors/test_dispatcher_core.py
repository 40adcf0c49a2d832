"""DispatcherCore, synchronously: slots reserved per lease, given back, backoff, pause."""

from __future__ import annotations

import logging
import math

from gotask._job import JobRecord
from gotask._messages import LeaseWait, PauseWorkers, RunJobs, SlotsFreed, Unpark
from gotask.actors._effects import Call, Called, CallFailed, Log, Tick
from gotask.actors.dispatcher import DispatcherConfig, DispatcherCore
from gotask.actors.storage.base import LeaseJobs, LeaseReply
from gotask.runtime import Address, Envelope, ErrorReply, Ok, Respond, Send

STORE = Address("n1", "storage")
WORKERS = Address("n1", "workers")


def core(**kw: object) -> DispatcherCore:
    config = DispatcherConfig(**{"concurrency": 4, "prefetch": 4, "lease_max": 512, **kw})  # type: ignore[arg-type]
    return DispatcherCore("n1", STORE, WORKERS, config)


def jobs(n: int) -> tuple[JobRecord, ...]:
    return tuple(JobRecord(f"j{i}", "t", "default", b"", 0, "active", 0.0, 0.0, 3, 60.0, 1)
                 for i in range(n))


def leased(effect: object) -> tuple[int, object]:
    assert isinstance(effect, Call) and effect.dst == STORE
    assert isinstance(effect.msg, LeaseWait) and isinstance(effect.msg.lease, LeaseJobs)
    return effect.msg.lease.limit, effect.tag


def test_first_tick_leases_every_slot() -> None:
    d = core()
    assert d.deadline() == -math.inf
    [effect] = d.handle(Tick(0.0), 0.0)
    assert leased(effect)[0] == 8
    assert d.free == 0 and d.deadline() == math.inf
    assert d.handle(Tick(1.0), 1.0) == []


def test_a_grant_goes_to_the_workers_and_ungranted_slots_are_leased_again() -> None:
    d = core()
    [effect] = d.handle(Tick(0.0), 0.0)
    granted = jobs(3)
    effects = d.handle(Called(effect.tag, LeaseReply(granted)), 0.1)  # type: ignore[union-attr]
    assert effects[0] == Send(WORKERS, RunJobs(granted))
    assert leased(effects[1])[0] == 5
    assert len(effects) == 2


def test_freed_slots_start_a_lease_only_when_none_is_in_flight() -> None:
    d = core()
    [first] = d.handle(Tick(0.0), 0.0)
    d.handle(Called(first.tag, LeaseReply(jobs(8))), 0.1)  # type: ignore[union-attr]
    [second] = d.handle(SlotsFreed(2), 0.2)
    assert leased(second)[0] == 2
    assert d.handle(SlotsFreed(3), 0.3) == []  # one lease in flight already
    effects = d.handle(Called(second.tag, LeaseReply(())), 5.0)  # type: ignore[union-attr]
    assert [leased(e)[0] for e in effects] == [5]


def test_two_leases_in_flight_each_take_at_most_lease_max() -> None:
    d = core(leases_in_flight=2, lease_max=3)
    effects = d.handle(Tick(0.0), 0.0)
    assert [leased(e)[0] for e in effects] == [3, 3]
    assert d.free == 2


def test_freed_slots_never_exceed_capacity() -> None:
    d = core()
    d.handle(Tick(0.0), 0.0)
    assert d.handle(SlotsFreed(100), 0.1) == []  # a lease is in flight
    assert d.free == d.capacity == 8


def test_a_failed_lease_backs_off_with_the_shells_jitter() -> None:
    d = core(retry_backoff_s=0.5)
    [effect] = d.handle(Tick(0.0), 0.0)
    failed = CallFailed(effect.tag, "CallTimeout", "no answer", False, 1.2)  # type: ignore[union-attr]
    [log] = d.handle(failed, 10.0)
    assert isinstance(log, Log) and log.level == logging.WARNING
    assert d.free == 8 and d.deadline() == 10.6
    assert d.handle(SlotsFreed(1), 10.3) == []
    assert d.handle(Tick(10.5), 10.5) == []
    [again] = d.handle(Tick(10.6), 10.6)
    assert leased(again)[0] == 8 and d.deadline() == math.inf


def test_pause_unparks_storage_then_answers_and_resume_leases() -> None:
    d = core()
    [first] = d.handle(Tick(0.0), 0.0)
    request = Envelope(Address("n1", "dispatcher"), Address("n1", "$call"), 7, PauseWorkers(True))
    [unpark] = d.handle(PauseWorkers(True), 0.1, request)
    assert isinstance(unpark, Call) and unpark.msg == Unpark("n1")
    assert d.handle(Called(unpark.tag, Ok()), 0.2) == [Respond(request, Ok())]
    effects = d.handle(Called(first.tag, LeaseReply(())), 0.3)  # type: ignore[union-attr]
    assert effects == []  # paused: the empty lease is not renewed
    resume = Envelope(request.dst, request.src, 8, PauseWorkers(False))
    effects = d.handle(PauseWorkers(False), 0.4, resume)
    assert effects[0] == Respond(resume, Ok())
    assert leased(effects[1])[0] == 8


def test_a_failed_unpark_answers_the_pause_with_the_error() -> None:
    d = core()
    request = Envelope(Address("n1", "dispatcher"), Address("n1", "$call"), 7, PauseWorkers(True))
    [unpark] = d.handle(PauseWorkers(True), 0.1, request)
    failed = CallFailed(unpark.tag, "StorageUnavailable", "down", True)  # type: ignore[union-attr]
    assert d.handle(failed, 0.2) == [Respond(request, ErrorReply("StorageUnavailable", "down", ""))]


def test_answers_to_calls_of_an_earlier_life_are_ignored() -> None:
    d = core()
    assert d.handle(Called("old", LeaseReply(jobs(2))), 0.0) == []
    assert d.handle(CallFailed("old", "E", "e", False), 0.0) == []
    assert d.free == 8 and d.in_flight == 0
