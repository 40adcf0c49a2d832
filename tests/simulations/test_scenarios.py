"""Every scenario, a fixed set of seeds: no invariant may be violated."""

from __future__ import annotations

import pytest

from simulations.harness import simulate
from simulations.invariants import check
from simulations.scenarios import load
from simulations.sweep import replay_command

SEEDS = (1, 2)


@pytest.mark.parametrize("name", sorted(load()))
def test_scenario_holds_its_invariants(name: str) -> None:
    for seed in SEEDS:
        result = simulate(load()[name], seed)
        report = check(result)
        assert report.ok, "\n".join([*report.violations, replay_command(name, seed)])
        assert report.jobs > 0
        assert result.drained_at is not None


def test_every_scenario_is_listed_with_a_summary() -> None:
    scenarios = load()
    assert len(scenarios) >= 11
    assert all(s.doc and s.doc != s.name for s in scenarios.values())


def test_faults_do_what_they_claim() -> None:
    """The scenarios' faults leave their marks: duplicates of the right kind, a poison
    job in the DLQ, a repeated ack answered "duplicate", a full link buffer."""
    reports = {name: check(simulate(load()[name], 1))
               for name in ("zombie_worker", "rolling_restart", "poison_job")}
    # Whether a crash catches a job mid-run depends on the schedule: one of three seeds.
    crashes = (check(simulate(load()["node_crash"], seed)) for seed in (1, 2, 3))
    assert any(r.duplicates.get("worker loss", 0) > 0 for r in crashes)
    assert reports["zombie_worker"].duplicates.get("stalled worker", 0) > 0
    assert reports["rolling_restart"].duplicates.get("drain", 0) > 0
    assert reports["poison_job"].outcomes.get("dead", 0) >= 2
    acked = simulate(load()["ack_reply_lost"], 3)
    assert any(" duplicate" in line for line in acked.history.lines() if "complete" in line)
    burst = simulate(load()["burst"], 1)
    assert burst.peak_in_flight == burst.spec.outbound_max


#: Seeds that once found real bugs: a node restarted under the same name took a late
#: reply meant for its previous incarnation (correlation ids restarted at 1), and a
#: worker ran an older attempt of a job it had just leased again.
REGRESSIONS = (
    ("poison_job", 65), ("poison_job", 356), ("poison_job", 521),
    ("node_crash", 449), ("node_crash", 741), ("zombie_worker", 515),
)


@pytest.mark.parametrize(("name", "seed"), REGRESSIONS)
def test_seeds_that_found_bugs_stay_clean(name: str, seed: int) -> None:
    report = check(simulate(load()[name], seed))
    assert report.ok, "\n".join([*report.violations, replay_command(name, seed)])
