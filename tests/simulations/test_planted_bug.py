"""The checker's self-test: planted storage bugs (test-only flags of the memory core) are
caught by a sweep: a stale completion accepted, a cron fire without compare-and-set."""

from __future__ import annotations

from simulations.scenarios import load
from simulations.sweep import run_one, sweep


def test_a_sweep_catches_storage_accepting_stale_completions() -> None:
    result = sweep(sorted(load()), range(100), planted="stale-ack", stop_on_failure=True)
    caught = result.failures
    assert caught, "100 seeds did not catch the planted bug"
    first = caught[0]
    assert any("completion of a stale token" in v for v in first.violations), first
    assert run_one(first.scenario, first.seed, planted=None).ok


def test_the_cron_invariant_catches_fires_without_the_compare_and_set() -> None:
    """Storage applies a cron fire whatever last fired tick it names (test-only flag
    `MemoryStorageCore(fire_without_cas=True)`): racing nodes fire a tick twice. Their
    jobs share the idempotency key `cron:NAME:TICK`, so no second job exists: only the
    checker's count of storage's fire replies can see it."""
    result = sweep(["cron_days"], range(3), planted="cron-no-cas", stop_on_failure=True)
    assert result.failures, "3 seeds did not catch the planted cron bug"
    first = result.failures[0]
    assert any("(no compare-and-set)" in v for v in first.violations), first
    assert any(" times" in v and "cron minutely: tick" in v for v in first.violations), first
    assert not any("stored twice" in v for v in first.violations), first
    clean = run_one(first.scenario, first.seed)
    assert clean.ok, clean.violations
