"""The checker on hand-written histories: each broken rule is reported, a clean one is not."""

from __future__ import annotations

import math
from typing import Any

from gotask._app import pack_args
from gotask._job import UNSTARTED_FREE_MAX, JobRecord
from gotask.runtime.world import SIM_EPOCH_S
from simulations.clients import OpState
from simulations.cluster import SimSpec, Window
from simulations.harness import RunResult
from simulations.history import (
    Acked,
    Beat,
    EnqueueDone,
    Event,
    ExecEnded,
    ExecStarted,
    Expired,
    History,
    Leased,
    Nacked,
    Stored,
)
from simulations.invariants import check
from simulations.workload import Op

T0 = SIM_EPOCH_S
ARGS = pack_args(["op-1", b"x", {}, 1.0, 0])
JOB = "JOB00000000000000000000001"


def stored(t: float = 1.0, due: float = 0.0, max_attempts: int = 3) -> Stored:
    return Stored(t, "store", JOB, "key-op-1", ARGS, T0 + t, T0 + t + due, max_attempts, True)


def leased(t: float, attempt: int, holder: str = "w1") -> Leased:
    return Leased(t, "store", JOB, attempt, holder, T0 + t, T0 + t + 5.0)


def ran(t: float, attempt: int, node: str = "w1", outcome: str = "ok",
        args: bytes = ARGS) -> list[Event]:
    return [ExecStarted(t, node, JOB, attempt, 1, args),
            ExecEnded(t + 0.5, node, JOB, attempt, 1, outcome)]


def acked(t: float, attempt: int, status: str = "ok") -> Acked:
    return Acked(t, "store", JOB, attempt, status, T0 + t)


def started(t: float, attempt: int) -> Beat:
    """An accepted `Heartbeat(started=True)` of that attempt, extending it by 5 s."""
    return Beat(t, "w1", JOB, attempt, "ok", T0 + t, T0 + t + 5.0, True)


def expired(t: float, state: str = "queued") -> Expired:
    return Expired(t, "store", JOB, state, T0 + t)


def enqueued(t: float = 1.0) -> EnqueueDone:
    return EnqueueDone(t, "c1", "op-1", "ok", JOB, True, "")


def record(state: str, attempt: int) -> JobRecord:
    return JobRecord(id=JOB, task="work", queue="default", args=ARGS, priority=0,
                     state=state, created_at=T0, due_at=T0, max_attempts=3,
                     result_ttl_s=60.0, attempt=attempt)


def verdict(events: list[Event], *, final: JobRecord | None = None,
            windows: tuple[Window, ...] = ()) -> list[str]:
    op = Op("op-1", "c1", 1.0, "work", ARGS, "key-op-1", 0.0, 3, None)
    result = RunResult(
        scenario="synthetic", seed=0, spec=SimSpec(), history=History(events),
        ops=(OpState(op, "ok", JOB, 1),), final={JOB: final} if final else {},
        windows=windows, failures=(), quiet_at=10.0, drained_at=20.0, bound_at=100.0,
        peak_in_flight=1,
    )
    return list(check(result).violations)


def happy() -> list[Any]:
    return [stored(), enqueued(), leased(1.0, 1), *ran(1.1, 1), acked(1.7, 1)]


def test_a_clean_history_passes() -> None:
    assert verdict(happy(), final=record("succeeded", 1)) == []


def test_loss_an_acknowledged_job_that_never_finished() -> None:
    found = verdict([stored(), enqueued(), leased(1.0, 1)], final=record("active", 1))
    assert any("liveness" in v for v in found)


def test_phantom_a_lease_of_a_job_never_stored() -> None:
    assert any("phantom" in v for v in verdict([leased(1.0, 1)]))


def test_overlapping_leases() -> None:
    found = verdict([stored(), leased(1.0, 1), leased(2.0, 2)])
    assert any("overlapping leases" in v for v in found)


def test_a_lease_after_an_accepted_completion() -> None:
    found = verdict([*happy(), leased(3.0, 2)])
    assert any("leased after it was succeeded" in v for v in found)


def test_a_stale_completion_accepted() -> None:
    events = [stored(), leased(1.0, 1), *ran(1.1, 1), expired(6.5), leased(6.6, 2),
              acked(7.0, 1, "ok")]
    assert any("completion of a stale token" in v for v in verdict(events))


def test_a_repeated_ack_must_be_answered_duplicate() -> None:
    found = verdict([*happy(), acked(2.0, 1, "stale")], final=record("succeeded", 1))
    assert any("expected duplicate" in v for v in found)


def test_attempts_count_up_by_one() -> None:
    events = [stored(), leased(1.0, 1), expired(6.5), leased(6.6, 3)]
    assert any("attempt 3 follows attempt 1" in v for v in verdict(events))


def test_nothing_is_leased_before_it_is_due() -> None:
    assert any("before due" in v for v in verdict([stored(due=30.0), leased(2.0, 1)]))


def test_dlq_exactly_when_attempts_are_exhausted() -> None:
    early = verdict([stored(max_attempts=2), leased(1.0, 1), expired(6.5, "dead")])
    assert any("DLQ exactly when" in v for v in early)
    late = verdict([stored(max_attempts=1), leased(1.0, 1), started(1.5, 1),
                    expired(6.5, "queued")])
    assert any("DLQ exactly when" in v for v in late)
    # A lease that expires before its start was stored is free, a few times per job.
    free = [stored(max_attempts=1), leased(1.0, 1), expired(6.5, "queued")]
    assert not any("DLQ exactly when" in v for v in verdict(free))
    spent = [stored(max_attempts=1)]
    for attempt in range(1, UNSTARTED_FREE_MAX + 1):
        spent += [leased(attempt * 10.0, attempt), expired(attempt * 10.0 + 6, "queued")]
    last = UNSTARTED_FREE_MAX + 1
    spent += [leased(last * 10.0, last), expired(last * 10.0 + 6, "queued")]
    assert any("DLQ exactly when" in v for v in verdict(spent))
    retry = [stored(max_attempts=1), leased(1.0, 1), *ran(1.1, 1, outcome="raised"),
             Nacked(1.7, "store", JOB, 1, "ok", "retry", 1.0, "scheduled", T0 + 1.7)]
    assert any("DLQ exactly when" in v for v in verdict(retry))


def test_a_lease_may_not_expire_early() -> None:
    events = [stored(), leased(1.0, 1), expired(3.0)]
    assert any("expired early" in v for v in verdict(events))


def test_arguments_must_arrive_byte_identical() -> None:
    events = [stored(), leased(1.0, 1), *ran(1.1, 1, args=ARGS + b"\x00")]
    assert any("arguments delivered differ" in v for v in verdict(events))


def test_a_second_job_for_one_idempotency_key() -> None:
    other = Stored(2.0, "store", "JOB00000000000000000000002", "key-op-1", ARGS, T0 + 2,
                   T0 + 2, 3, True)
    assert any("second job for key" in v for v in verdict([stored(), other]))


def test_duplicates_are_explained_by_a_fault_or_reported() -> None:
    events = [stored(), leased(1.0, 1), *ran(1.1, 1, outcome="stopped"), expired(6.5),
              leased(6.6, 2, "w2"), *ran(6.7, 2, node="w2"), acked(7.3, 2)]
    bare = verdict(events, final=record("succeeded", 2))
    assert any("unexplained duplicate" in v for v in bare)
    crash = Window("crash", "w1", 1.2, math.inf)
    assert verdict(events, final=record("succeeded", 2), windows=(crash,)) == []
