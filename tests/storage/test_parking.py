"""The pure parking lot: the one wake rule, timers, deadlines, unparking, its bound."""

from __future__ import annotations

import math

import pytest

from gotask._errors import StorageError
from gotask._job import JobRecord
from gotask.actors.storage._parking import ParkingLot, Wait
from gotask.actors.storage.base import LeaseJobs, LeaseReply, QueueWeight

LEASED_AT = 1000.0  # the storage time the parked lease ran at
EMPTY = LeaseReply(())


def _lease(*queues: str, node: str = "n1") -> LeaseJobs:
    return LeaseJobs(node, tuple(QueueWeight(q) for q in queues), 10, 30.0)


def _parked(*queues: str, node: str = "n1",
            lot: ParkingLot[str] | None = None) -> tuple[ParkingLot[str], Wait[str]]:
    lot = ParkingLot() if lot is None else lot
    wait = lot.start(f"req-{len(lot)}", _lease(*queues, node=node), 30.0, mono=0.0)
    assert not lot.leased(wait, EMPTY, LEASED_AT, None, mono=0.0)
    return lot, wait


def _relet(lot: ParkingLot[str], mono: float = 1.0) -> list[str]:
    return [wait.request for wait in lot.take(mono)[1]]


def test_an_event_older_than_the_lease_does_not_wake_it() -> None:
    # A script that ran before the lease published it: the lease saw those jobs.
    lot, _ = _parked("q")
    lot.wake(["q"], at=LEASED_AT - 0.001)
    assert lot.next_wakeup() == 30.0
    assert _relet(lot) == []


def test_an_event_as_old_as_the_lease_or_newer_wakes_it() -> None:
    lot, _ = _parked("q")
    lot.wake(["q"], at=LEASED_AT)  # same microsecond: which ran first is unknown
    assert lot.next_wakeup() == -math.inf
    assert _relet(lot) == ["req-0"]
    lot, _ = _parked("q")
    lot.wake(["q"], at=LEASED_AT + 0.5)
    assert _relet(lot) == ["req-0"]


def test_a_newer_event_wakes_it_after_an_older_one() -> None:
    lot, _ = _parked("q")
    lot.wake(["q"], at=LEASED_AT - 1.0)
    assert _relet(lot) == []
    lot.wake(["q"], at=LEASED_AT + 1.0)
    assert _relet(lot) == ["req-0"]


def test_only_wakes_of_its_queues_count() -> None:
    lot, _ = _parked("q", "r")
    lot.wake(["other"], at=LEASED_AT + 1.0)
    assert _relet(lot) == []
    lot.wake(["r"], at=LEASED_AT + 1.0)
    assert _relet(lot) == ["req-0"]


def test_a_local_command_and_wake_all_always_wake_it() -> None:
    lot, _ = _parked("q")
    lot.wake(["q"])  # an enqueue of this shell, sent after the lease
    assert _relet(lot) == ["req-0"]
    lot, _ = _parked("q")
    lot.wake_all()  # events may have been missed, or the queues are not known
    assert _relet(lot) == ["req-0"]


def test_a_relet_wait_is_not_woken_again_by_the_same_wake() -> None:
    lot, wait = _parked("q")
    lot.wake(["q"])
    assert _relet(lot) == ["req-0"]
    assert not lot.leased(wait, EMPTY, LEASED_AT + 2.0, None, mono=1.0)
    assert _relet(lot, 2.0) == []


def test_wakes_before_the_lease_was_sent_do_not_count() -> None:
    lot: ParkingLot[str] = ParkingLot()
    lot.wake(["q"], at=LEASED_AT + 5.0)  # seen before the lease left
    lot.wake(["q"])
    _parked("q", lot=lot)
    assert _relet(lot) == []


def test_a_wake_while_the_lease_is_in_flight_makes_it_lease_again() -> None:
    lot: ParkingLot[str] = ParkingLot()
    wait = lot.start("req", _lease("q"), 30.0, mono=0.0)
    lot.wake(["q"])  # an enqueue sent after the lease, before its answer came
    assert not lot.leased(wait, EMPTY, LEASED_AT, None, mono=0.5)
    assert lot.next_wakeup() == -math.inf
    assert _relet(lot) == ["req"]


def test_a_lease_with_jobs_or_past_its_deadline_is_answered() -> None:
    lot: ParkingLot[str] = ParkingLot()
    wait = lot.start("req", _lease("q"), 5.0, mono=0.0)
    job = JobRecord("j", "t", "q", b"", 0, "active", 0.0, 0.0, 3, 60.0)
    assert lot.leased(wait, LeaseReply((job,)), LEASED_AT, None, mono=1.0)
    wait = lot.start("req", _lease("q"), 5.0, mono=0.0)
    assert lot.leased(wait, EMPTY, LEASED_AT, None, mono=5.0)
    assert len(lot) == 0


def test_deadline_answers_empty() -> None:
    lot, _ = _parked("q")
    assert lot.next_wakeup() == 30.0
    assert lot.take(29.9) == ([], [])
    assert lot.take(30.0) == (["req-0"], [])
    assert len(lot) == 0 and lot.next_wakeup() == math.inf


def test_a_due_job_sets_a_timer_in_local_time() -> None:
    lot: ParkingLot[str] = ParkingLot()
    wait = lot.start("req", _lease("q"), 30.0, mono=0.0)
    # Storage time runs 1000 s ahead of local time; the next job is due 3 s later.
    assert not lot.leased(wait, EMPTY, LEASED_AT, LEASED_AT + 3.0, mono=0.0)
    assert lot.next_wakeup() == pytest.approx(3.0)
    assert _relet(lot, 2.9) == []
    assert _relet(lot, 3.0) == ["req"]


def test_a_due_event_brings_the_timer_forward_for_its_queues_only() -> None:
    lot, _ = _parked("q")
    _parked("r", lot=lot)
    lot.due("q", LEASED_AT + 2.0, now=LEASED_AT)
    assert lot.next_wakeup() == pytest.approx(2.0)
    assert _relet(lot, 2.0) == ["req-0"]


def test_a_due_event_while_the_lease_is_in_flight_counts() -> None:
    lot: ParkingLot[str] = ParkingLot()
    wait = lot.start("req", _lease("q"), 30.0, mono=0.0)
    lot.due("q", LEASED_AT + 4.0, now=LEASED_AT)
    assert not lot.leased(wait, EMPTY, LEASED_AT, None, mono=0.0)
    assert lot.next_wakeup() == pytest.approx(4.0)


def test_unpark_answers_its_node_and_its_leases_in_flight() -> None:
    lot, _ = _parked("q", node="n1")
    _parked("q", node="n2", lot=lot)
    flying = lot.start("flying", _lease("q", node="n1"), 30.0, mono=0.0)
    assert lot.unpark("n1") == ["req-0"]
    assert len(lot) == 1
    assert lot.leased(flying, EMPTY, LEASED_AT, None, mono=0.0)  # answered, not parked
    again = lot.start("later", _lease("q", node="n1"), 30.0, mono=0.0)
    assert not lot.leased(again, EMPTY, LEASED_AT, None, mono=0.0)  # a new wait parks


def test_parked_max_refuses_more() -> None:
    lot: ParkingLot[str] = ParkingLot(parked_max=2)
    _parked("q", lot=lot)
    _parked("q", lot=lot)
    with pytest.raises(StorageError, match="too many parked leases"):
        lot.start("more", _lease("q"), 1.0, mono=0.0)


def test_a_due_time_of_an_unknown_queue_applies_to_every_wait_even_in_flight() -> None:
    lot, _ = _parked("q")
    flying = lot.start("flying", _lease("r"), 30.0, mono=0.0)
    lot.due_after(None, 2.0, mono=0.0)
    assert not lot.leased(flying, EMPTY, LEASED_AT, None, mono=0.0)
    assert lot.next_wakeup() == pytest.approx(2.0)
    assert sorted(_relet(lot, 2.0)) == ["flying", "req-0"]
