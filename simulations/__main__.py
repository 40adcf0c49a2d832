"""The simulation CLI: list scenarios, run one seed, sweep many.

    python -m simulations list
    python -m simulations run SCENARIO --seed N [-v]
    python -m simulations sweep --seeds N [--scenario S] [--time-budget-s T] [--jobs J]

`run` prints the seed first, with -v one line per event (time, node, event), then the
verdict, and ends with `trace <sha256 of the event history>`. A run or sweep that finds
a violation exits 1 and prints the command that replays it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .harness import PLANTED, RunResult, simulate
from .invariants import Report, check
from .scenarios import load
from .sweep import Outcome, SweepResult, replay_command, sweep


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run it; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "run":
        return _run(args.scenario, args.seed, args.verbose, args.plant)
    return _sweep(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations",
                                     description="Deterministic cluster simulations.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name the scenarios")
    run = sub.add_parser("run", help="run one scenario with one seed")
    run.add_argument("scenario", choices=sorted(load()))
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("-v", "--verbose", action="store_true", help="print every event")
    run.add_argument("--plant", choices=PLANTED, help=argparse.SUPPRESS)
    many = sub.add_parser("sweep", help="run many seeds")
    many.add_argument("--seeds", type=int, required=True, help="how many seeds")
    many.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    many.add_argument("--scenario", choices=sorted(load()), help="only this scenario")
    many.add_argument("--time-budget-s", type=float, help="stop starting runs after this")
    many.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                      help="worker processes (default: one per CPU)")
    many.add_argument("--stop-on-failure", action="store_true",
                      help="stop starting runs after the first failure")
    many.add_argument("--plant", choices=PLANTED, help=argparse.SUPPRESS)
    return parser


def _list() -> int:
    for name, scenario in load().items():
        print(f"{name:<20} {scenario.doc}")
    return 0


def _run(name: str, seed: int, verbose: bool, planted: str | None) -> int:
    print(f"seed {seed}", flush=True)
    scenario = load()[name]
    print(f"scenario {name}: {scenario.doc}")
    result = simulate(scenario, seed, planted=planted)
    if verbose:
        for line in result.history.lines():
            print(line)
    report = check(result)
    _summary(result, report)
    for violation in report.violations:
        print(f"VIOLATION {violation}")
    if report.violations:
        print(f"replay: {replay_command(name, seed, planted=planted)}")
    print(f"trace {result.history.trace()}")
    return 0 if report.ok else 1


def _summary(result: RunResult, report: Report) -> None:
    outcomes = " ".join(f"{k}={v}" for k, v in report.outcomes.items())
    dups = " ".join(f"{k.replace(' ', '-')}={v}" for k, v in report.duplicates.items())
    drained = "never" if result.drained_at is None else f"t={result.drained_at:.1f}"
    print(f"jobs {report.jobs} ({outcomes})  executions {report.executions}  "
          f"duplicates {sum(report.duplicates.values())} ({dups or 'none'})")
    print(f"quiet at t={result.quiet_at:.1f}  drained {drained}  bound "
          f"t={result.bound_at:.1f}  peak in flight {result.peak_in_flight}  "
          f"events {len(result.history.events)}  "
          f"log errors {len(report.log_errors)}  violations {len(report.violations)}")
    for line in report.log_errors:
        print(f"log {line.strip()}")


def _sweep(args: argparse.Namespace) -> int:
    names = [args.scenario] if args.scenario else sorted(load())
    seeds = range(args.start, args.start + args.seeds)
    print(f"sweep seeds {args.start}..{args.start + args.seeds - 1} over {len(names)} "
          f"scenario(s) in {args.jobs} process(es)", flush=True)
    progress = _Progress()
    result = sweep(names, seeds, jobs=args.jobs, time_budget_s=args.time_budget_s,
                   planted=args.plant, stop_on_failure=args.stop_on_failure,
                   on_outcome=progress)
    _sweep_summary(result)
    return 1 if result.failures else 0


class _Progress:
    """Prints each failure as it arrives, and a count every `EVERY` runs."""

    EVERY = 500

    def __init__(self) -> None:
        self.runs = 0
        self.failed = 0

    def __call__(self, outcome: Outcome) -> None:
        self.runs += 1
        if not outcome.ok:
            self.failed += 1
            _print_failure(outcome)
        if self.runs % self.EVERY == 0:
            print(f"... {self.runs} runs, {self.failed} failed", flush=True)


def _print_failure(outcome: Outcome) -> None:
    print(f"FAIL {outcome.scenario} seed {outcome.seed}: {len(outcome.violations)} "
          f"violation(s); first: {outcome.violations[0]}")
    print(f"  replay: {replay_command(outcome.scenario, outcome.seed, planted=outcome.planted)}",
          flush=True)


def _sweep_summary(result: SweepResult) -> None:
    dups: dict[str, int] = {}
    for outcome in result.outcomes:
        for reason, count in outcome.duplicates.items():
            dups[reason] = dups.get(reason, 0) + count
    cut = " (stopped early)" if result.cut_short else ""
    print(f"runs {len(result.outcomes)}  failures {len(result.failures)}  "
          f"jobs {sum(o.jobs for o in result.outcomes)}  duplicates {dups or 'none'}  "
          f"wall {result.wall_s:.1f}s{cut}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into `head`: the reader has seen enough
        sys.stderr.close()
        sys.exit(1)
