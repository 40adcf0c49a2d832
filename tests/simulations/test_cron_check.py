"""The cron invariant on hand-written histories: each broken rule is reported (a double
fire even when idempotency hid it, a fire without the compare-and-set, a tick missed
while a worker could fire it, ticks never fired), and a clean or excused one is not."""

from __future__ import annotations

from gotask.actors.storage.base import CronState
from simulations.cluster import SimSpec
from simulations.harness import RunResult
from simulations.history import CronFired, CronRegistered, Event, Fault, History
from simulations.invariants import check
from simulations.workload import CronSpec

#: A whole minute of storage time; trio time t reads M - 30 + t on the storage clock.
M = 1_700_000_040
SPEC = SimSpec(workers=1, cron=(CronSpec("minutely", "* * * * *", misfire="once"),))


def at(t: float) -> float:
    return M - 30 + t


def registered(t: float = 0.0, last: int = M - 30) -> CronRegistered:
    return CronRegistered(t, "store", "minutely", last, at(t))


def fire(t: float, expected: int, tick: int, outcome: str = "fired",
         ticks: tuple[int, ...] | None = None) -> CronFired:
    fired = (tick,) if ticks is None and outcome == "fired" else (ticks or ())
    ids = tuple(f"J{x}" for x in fired)
    last = tick if outcome in ("fired", "paused") else expected
    return CronFired(t, "store", "minutely", expected, tick, outcome, last, fired, ids, at(t))


def cron_violations(events: list[Event], *, last: int, end_t: float) -> list[str]:
    state = CronState("minutely", "-", "worker1", at(0), last, False, None)
    result = RunResult(
        scenario="synthetic", seed=0, spec=SPEC, history=History(events), ops=(), final={},
        windows=(), failures=(), quiet_at=end_t, drained_at=end_t, bound_at=end_t + 100,
        peak_in_flight=1, cron_final=(state,), store_now=at(end_t),
    )
    return [v for v in check(result).violations if "cron " in v]


def clean() -> list[Event]:
    return [registered(), fire(30.01, M - 30, M), fire(30.02, M - 30, M, "stale"),
            fire(90.01, M, M + 60), fire(90.03, M, M + 60, "stale")]


def test_every_tick_fired_once_is_clean() -> None:
    assert cron_violations(clean(), last=M + 60, end_t=93.0) == []


def test_a_fire_without_the_compare_and_set_is_caught_even_when_idempotency_hid_it() -> None:
    # The second node's fire of M was applied (storage answered "fired" with the same
    # job: its key cron:minutely:M made the enqueue a repeat).
    events = [*clean()[:2], fire(30.02, M - 30, M), *clean()[3:]]
    found = cron_violations(events, last=M + 60, end_t=93.0)
    assert any("no compare-and-set" in v for v in found), found
    assert any(f"tick {M - 1_700_000_000} fired 2 times" in v for v in found), found


def test_a_stale_answer_to_the_current_tick_is_caught() -> None:
    events = [registered(), fire(30.01, M - 30, M, "stale")]
    found = cron_violations(events, last=M - 30, end_t=40.0)
    assert any("answered stale" in v for v in found), found


def test_a_tick_missed_while_a_worker_was_up_is_caught() -> None:
    events = [registered(), fire(30.01, M - 30, M), fire(150.01, M, M + 120)]
    found = cron_violations(events, last=M + 120, end_t=153.0)
    assert any("missed by the fire" in v and "worker1 could fire it" in v for v in found)


def test_a_tick_missed_while_every_worker_was_down_is_excused() -> None:
    events = [registered(), fire(30.01, M - 30, M), Fault(80.0, "worker1", "crash"),
              Fault(145.0, "worker1", "start"), fire(150.01, M, M + 120)]
    assert cron_violations(events, last=M + 120, end_t=153.0) == []


def test_the_misfire_policy_is_checked_per_fire() -> None:
    # `once` fires only the newest tick of a gap, never the older ones.
    events = [registered(), fire(30.01, M - 30, M), Fault(80.0, "worker1", "crash"),
              Fault(145.0, "worker1", "start"),
              fire(150.01, M, M + 120, ticks=(M + 60, M + 120))]
    found = cron_violations(events, last=M + 120, end_t=153.0)
    assert any("the once policy gives" in v for v in found), found


def test_ticks_never_fired_and_storage_disagreeing_are_caught() -> None:
    found = cron_violations(clean(), last=M + 60, end_t=300.0)
    assert any("never fired" in v for v in found), found
    found = cron_violations(clean(), last=M, end_t=93.0)
    assert any("storage holds last fired tick" in v for v in found), found
