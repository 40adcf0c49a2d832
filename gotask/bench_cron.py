"""`gotask bench cron`: the Scheduler's cost with many cron entries (issue 15).

Rules of this module:
- With `--storage URL`, real nodes (`bench_cron_nodes`): one node whose app declares N
  minutely entries and an idle node without entries, both paused (nothing leases the
  jobs) on fresh stores of that backend. Over measured minutes, each from the middle
  of a minute to the middle of the next (so it holds one tick), the cron node's process
  CPU minus the idle node's is the Scheduler's cost (memory storage runs inside the
  node, so its work counts too). After the measured minutes, the jobs of each one's
  tick are listed: lateness is `created_at - tick` of the tick's first and last job.
- Without `--storage`, in-process and deterministic in its work: N minutely entries on
  one Scheduler core (`SchedulerCore` with its cron duties) over a memory storage core,
  on a simulated clock that starts half a second before a minute. Every `Call` is
  applied to storage at once and answered, as the storage actor would.
- Two figures, as the issue states them: the CPU seconds the Scheduler core spends per
  minute of steady state (registration excluded), as a share of one core; and, for the
  first full minute, the CPU time from the minute until every entry's job is enqueued
  (the Scheduler's and storage's work together; a real node adds its storage round
  trips, batched by the storage shell).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gotask._app import App
from gotask.actors._effects import Call, Called, Effect, Tick
from gotask.actors.scheduler import SchedulerCore, cron_duties
from gotask.actors.storage.base import CRON_FIRED, CronFire, CronFireReply
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import Address

__all__ = ["main", "run_cron_bench"]

_STORE = Address("bench", "storage")
_START = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 59.5


def _app(entries: int) -> App:
    app = App("bench-cron")

    @app.task(name="noop")
    def noop() -> None: ...

    for i in range(entries):
        app.add_cron(f"e{i:06d}", "noop", "* * * * *")
    return app


class _Loop:
    """One Scheduler core and one storage core on a simulated clock."""

    def __init__(self, entries: int) -> None:
        self.core = SchedulerCore(_STORE, interval_s=3600.0)
        ids = iter(range(10**12))
        self.core.cron = cron_duties(_app(entries), "bench", _STORE,
                                     lambda: f"{next(ids):026d}", self.core.timers)
        self.storage = MemoryStorageCore()
        self.core_s = 0.0
        self.storage_s = 0.0
        self.fired = 0

    def tick(self, now: float) -> None:
        self._apply(self._timed(Tick(now), now), now)

    def _timed(self, msg: Any, now: float) -> list[Effect]:
        began = time.process_time()
        effects = self.core.handle(msg, now)
        self.core_s += time.process_time() - began
        return effects

    def _apply(self, effects: list[Effect], now: float) -> None:
        for effect in effects:
            if not isinstance(effect, Call):
                continue
            began = time.process_time()
            reply = self.storage.handle(effect.msg, now)
            self.storage_s += time.process_time() - began
            if isinstance(effect.msg, CronFire) and isinstance(reply, CronFireReply) \
                    and reply.outcome == CRON_FIRED:
                self.fired += len(reply.ids)
            self._apply(self._timed(Called(effect.tag, reply), now), now)


def run_cron_bench(entries: int, minutes: int, step_s: float = 0.1) -> dict[str, Any]:
    """Run `minutes` simulated minutes of `entries` minutely entries; the figures."""
    loop = _Loop(entries)
    loop.tick(_START - 60)  # registration, before the measured minutes
    loop.core_s = loop.storage_s = 0.0
    now = _START
    first_minute_s: float | None = None
    for _ in range(int(minutes * 60 / step_s)):
        now += step_s
        loop.tick(now)
        if first_minute_s is None and loop.fired >= entries:
            first_minute_s = loop.core_s + loop.storage_s
    return {
        "entries": entries, "minutes": minutes, "jobs_enqueued": loop.fired,
        "scheduler_cpu_pct_of_core": round(100 * loop.core_s / (minutes * 60), 3),
        "storage_cpu_s_per_minute": round(loop.storage_s / minutes, 3),
        "first_tick_all_enqueued_cpu_s": (round(first_minute_s, 3)
                                          if first_minute_s is not None else None),
    }


def main(argv: list[str]) -> int:
    """`gotask bench cron [--entries N] [--minutes M] [--storage URL] [--json]`."""
    parser = argparse.ArgumentParser(prog="gotask bench cron")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--storage", help="real nodes on this backend (memory://, redis://…)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.storage:
        from gotask.bench_cron_nodes import run_node_bench

        result = run_node_bench(args.storage, args.entries, args.minutes)
    else:
        result = run_cron_bench(args.entries, args.minutes)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key:32} {value}\n")
    return 0
