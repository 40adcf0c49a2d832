"""The checker's self-test: a storage that accepts a stale completion (a test-only flag
of the memory core) is caught by a sweep within 100 seeds."""

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
