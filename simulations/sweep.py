"""Running scenarios by seed: one run with its verdict, or a sweep over many seeds.

Rules of this module:
- `run_one` is the unit of work: simulate, check, and return a small picklable
  `Outcome` (violations, trace, counts), so sweeps can run in worker processes.
- A sweep runs every (scenario, seed) pair, seeds in order, each scenario per seed,
  in `jobs` processes; it stops starting new runs once its time budget is spent (or,
  if asked, once a run failed).
- `replay_command` is the exact command that reproduces one run.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterable, Iterator

import attrs

from .harness import simulate
from .invariants import check
from .scenarios import load

__all__ = ["Outcome", "SweepResult", "replay_command", "run_one", "sweep"]


@attrs.frozen
class Outcome:
    """The verdict on one (scenario, seed) run."""

    scenario: str
    seed: int
    violations: tuple[str, ...]
    trace: str
    jobs: int
    executions: int
    duplicates: dict[str, int]
    wall_s: float
    planted: str | None = None

    @property
    def ok(self) -> bool:
        """True when no invariant was violated."""
        return not self.violations


@attrs.frozen
class SweepResult:
    """The outcomes of a sweep, and whether it stopped early (time budget, or the first
    failure when asked to stop there)."""

    outcomes: tuple[Outcome, ...]
    wall_s: float
    cut_short: bool

    @property
    def failures(self) -> tuple[Outcome, ...]:
        """The runs that violated an invariant."""
        return tuple(o for o in self.outcomes if not o.ok)


def replay_command(scenario: str, seed: int, *, planted: str | None = None) -> str:
    """The command that replays one run exactly, printing every event."""
    bug = f" --plant {planted}" if planted else ""
    return f"python -m simulations run {scenario} --seed {seed} -v{bug}"


def run_one(scenario: str, seed: int, planted: str | None = None) -> Outcome:
    """Simulate and check one run; a run that raises is a failed run, not a crash."""
    started = time.perf_counter()
    try:
        result = simulate(load()[scenario], seed, planted=planted)
    except Exception as exc:
        text = "".join(traceback.format_exception_only(exc)).strip()
        return Outcome(scenario, seed, (f"the run raised {text}",), "-", 0, 0, {},
                       time.perf_counter() - started, planted)
    report = check(result)
    return Outcome(scenario, seed, report.violations, result.history.trace(), report.jobs,
                   report.executions, report.duplicates, time.perf_counter() - started,
                   planted)


def _pairs(scenarios: list[str], seeds: Iterable[int]) -> Iterator[tuple[str, int]]:
    for seed in seeds:
        for name in scenarios:
            yield name, seed


def sweep(
    scenarios: list[str],
    seeds: Iterable[int],
    *,
    jobs: int = 1,
    time_budget_s: float | None = None,
    planted: str | None = None,
    stop_on_failure: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> SweepResult:
    """Run every scenario with every seed; see the module rules.

    Args:
        jobs: worker processes (1: run in this process).
        time_budget_s: stop starting runs after this many seconds (None: no limit).
        planted: TEST-ONLY: a planted storage bug (`harness.PLANTED`), or None.
        stop_on_failure: stop starting runs once one has failed.
        on_outcome: called with each outcome as it arrives (progress, early reports).
    """
    started = time.perf_counter()
    limits = _Limits(None if time_budget_s is None else started + time_budget_s,
                     stop_on_failure, on_outcome or (lambda _: None))
    pairs = _pairs(scenarios, seeds)
    if jobs <= 1:
        outcomes, cut = _sweep_here(pairs, limits, planted)
    else:
        outcomes, cut = _sweep_pool(pairs, limits, planted, jobs)
    outcomes.sort(key=lambda o: (o.seed, o.scenario))
    return SweepResult(tuple(outcomes), time.perf_counter() - started, cut)


@attrs.frozen
class _Limits:
    deadline: float | None
    stop_on_failure: bool
    report: Callable[[Outcome], None]

    def reached(self, outcomes: list[Outcome]) -> bool:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return True
        return self.stop_on_failure and any(not o.ok for o in outcomes)


def _sweep_here(
    pairs: Iterator[tuple[str, int]], limits: _Limits, planted: str | None
) -> tuple[list[Outcome], bool]:
    outcomes: list[Outcome] = []
    for name, seed in pairs:
        if limits.reached(outcomes):
            return outcomes, True
        outcomes.append(run_one(name, seed, planted))
        limits.report(outcomes[-1])
    return outcomes, False


def _sweep_pool(
    pairs: Iterator[tuple[str, int]], limits: _Limits, planted: str | None, jobs: int
) -> tuple[list[Outcome], bool]:
    outcomes: list[Outcome] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        running: set[concurrent.futures.Future[Outcome]] = set()
        cut = False
        for name, seed in pairs:
            if limits.reached(outcomes):
                cut = True
                break
            if len(running) >= 2 * jobs:
                done, running = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                _collect(done, outcomes, limits)
            running.add(pool.submit(run_one, name, seed, planted))
        _collect(concurrent.futures.as_completed(running), outcomes, limits)
    return outcomes, cut


def _collect(
    done: Iterable[concurrent.futures.Future[Outcome]], outcomes: list[Outcome], limits: _Limits
) -> None:
    for future in done:
        outcomes.append(future.result())
        limits.report(outcomes[-1])
