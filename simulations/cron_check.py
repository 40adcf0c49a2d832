"""The cron invariant: every tick of every entry fired exactly once, or missed only as
the misfire policy allows while no worker could fire it.

Rules of this module:
- It judges what storage said, not only the jobs: every `CronFired` reply is replayed
  against the entry's last fired tick as the history tells it. A fire is accepted only
  from the last fired tick it names (the compare-and-set); every tick storage enqueued
  a job for is counted, so a tick fired twice is caught even when the job's idempotency
  key (`cron:NAME:TICK`) made the second enqueue a repeat.
- The ticks one fire covers, (expected, tick], are the entry's ticks by its own
  `CronEntry` (cronsim): `once` fires the newest, `all` the newest `misfire_limit`,
  `skip` the newest or none. The ticks it passes over are misfires, excused only when
  every worker was down or cut off around the tick's time (trio time found from the
  storage clock, which the history's storage events and the run's clock jumps give),
  or when the entry was paused.
- At the end, storage's last fired tick must be the one the history says, and every
  tick up to `END_SLACK_S` before storage's final clock must be covered.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from gotask._cron import CronEntry
from gotask.runtime.world import SIM_EPOCH_S

from .history import CronFired, CronRegistered, Event, Fault

if TYPE_CHECKING:
    from .harness import RunResult

__all__ = ["EXCUSE_AFTER_S", "EXCUSE_BEFORE_S", "CronModel", "ticks_between"]

#: A misfired tick is excused when every worker was down or cut off within this window
#: around the tick (trio seconds): before it, a call in flight may still be waiting out
#: its 10 s timeout; after it, a node needs a storage round trip and a retry.
EXCUSE_BEFORE_S = 15.0
EXCUSE_AFTER_S = 5.0
#: Ticks this close to the end of the run may still be on their way.
END_SLACK_S = 5.0
_CUT = frozenset({"partition", "isolate", "loss"})

Fail = Callable[[Event | None, str], None]


def _t(at: float) -> str:
    return f"{at - SIM_EPOCH_S:.0f}"


def ticks_between(entry: CronEntry, after: int, until: int) -> list[int]:
    """The entry's ticks in (after, until]."""
    out: list[int] = []
    for tick in entry.ticks_after(after):
        if tick > until:
            return out
        out.append(tick)
    return out


@attrs.define
class CronModel:
    """Each entry's last fired tick and what was fired or passed over, from the history."""

    entries: dict[str, CronEntry]
    fail: Fail
    first: dict[str, int] = attrs.Factory(dict)
    last: dict[str, int] = attrs.Factory(dict)
    fired: dict[str, Counter[int]] = attrs.Factory(dict)
    #: Ticks a fire passed over: (name, tick) -> the fire's event.
    missed: dict[tuple[str, int], CronFired] = attrs.Factory(dict)
    jobs: set[str] = attrs.Factory(set)
    offset: float | None = None
    fires: int = 0

    def registered(self, ev: CronRegistered) -> None:
        """A registration keeps the last fired tick; the first one opens the window."""
        self._clock(ev.time, ev.now)
        if ev.name not in self.last:
            self.first[ev.name] = self.last[ev.name] = ev.last_tick
            self.fired[ev.name] = Counter()
        elif ev.last_tick != self.last[ev.name]:
            self.fail(ev, f"cron {ev.name}: registration moved the last fired tick from "
                          f"{_t(self.last[ev.name])} to {_t(ev.last_tick)}")

    def fire(self, ev: CronFired) -> None:
        """Replay one fire reply against the compare-and-set."""
        self._clock(ev.time, ev.now)
        last, entry = self.last.get(ev.name), self.entries.get(ev.name)
        if last is None or entry is None:
            if ev.outcome != "missing":
                self.fail(ev, f"cron {ev.name}: answered {ev.outcome} for an entry never "
                              "registered or not declared")
            return
        if ev.outcome in ("fired", "paused"):
            self._applied(ev, entry, last)
        elif ev.outcome == "stale" and ev.expected == last:
            self.fail(ev, f"cron {ev.name}: fire from the last fired tick {_t(last)} "
                          "answered stale (its tick would be lost)")
        elif ev.outcome == "early" and ev.tick <= ev.now:
            self.fail(ev, f"cron {ev.name}: tick {_t(ev.tick)} answered early at "
                          f"{_t(ev.now)}")

    def _applied(self, ev: CronFired, entry: CronEntry, last: int) -> None:
        if ev.expected != last:
            self.fail(ev, f"cron {ev.name}: storage {ev.outcome} {_t(ev.expected)}->"
                          f"{_t(ev.tick)} while the last fired tick was {_t(last)} "
                          "(no compare-and-set)")
        if ev.tick > ev.now:
            self.fail(ev, f"cron {ev.name}: tick {_t(ev.tick)} fired before its time "
                          f"({_t(ev.now)} on the storage clock)")
        self.last[ev.name] = ev.tick
        self.fires += 1
        self.jobs.update(ev.ids)
        counted = self.fired[ev.name]
        for tick in ev.ticks:
            counted[tick] += 1
            if counted[tick] > 1:
                self.fail(ev, f"cron {ev.name}: tick {_t(tick)} fired {counted[tick]} times")
        self._policy(ev, entry)

    def _policy(self, ev: CronFired, entry: CronEntry) -> None:
        covered = ticks_between(entry, ev.expected, ev.tick)
        if not covered or covered[-1] != ev.tick:
            self.fail(ev, f"cron {ev.name}: {_t(ev.tick)} is not a tick of the entry")
            return
        allowed, _ = entry.due_ticks(ev.expected, ev.tick)
        if entry.misfire == "skip":
            allowed_ok = set(ev.ticks) <= {ev.tick}
        else:
            allowed_ok = list(ev.ticks) == allowed
        if ev.outcome == "fired" and not allowed_ok:
            self.fail(ev, f"cron {ev.name}: fired ticks {[_t(x) for x in ev.ticks]}, the "
                          f"{entry.misfire} policy gives {[_t(x) for x in allowed]}")
        if ev.outcome == "paused":
            return
        for tick in set(covered) - set(ev.ticks):
            self.missed[(ev.name, tick)] = ev

    def _clock(self, t: float, now: float) -> None:
        if self.offset is None:
            self.offset = now - t

    # -- after the run -----------------------------------------------------------------

    def finish(self, result: RunResult, events: Iterable[Event]) -> None:
        """Storage agrees with the history; every misfire is excused; no tick is left."""
        down = _unhealthy(result, events)
        clock = _StoreClock(self.offset or 0.0, result.jumps)
        for state in result.cron_final:
            self._finish_entry(state.name, state.last_tick, result)
        for (name, tick), ev in sorted(self.missed.items(), key=lambda kv: kv[0][1]):
            at = clock.trio_time(tick)
            healthy = [w for w, spans in sorted(down.items()) if not _touches(
                spans, at - EXCUSE_BEFORE_S, at + EXCUSE_AFTER_S)]
            if healthy:
                self.fail(ev, f"cron {name}: tick {_t(tick)} (t={at:.1f}) missed by the "
                              f"fire {_t(ev.expected)}->{_t(ev.tick)} while "
                              f"{', '.join(healthy)} could fire it")

    def _finish_entry(self, name: str, stored: int, result: RunResult) -> None:
        entry, last = self.entries.get(name), self.last.get(name)
        if entry is None or last is None:
            return
        if stored != last:
            self.fail(None, f"cron {name}: storage holds last fired tick {_t(stored)}, the "
                            f"history says {_t(last)}")
        left = ticks_between(entry, stored, math.floor(result.store_now - END_SLACK_S))
        if left:
            self.fail(None, f"cron {name}: {len(left)} ticks from {_t(left[0])} never "
                            f"fired (storage's clock ended at {_t(result.store_now)})")


@attrs.frozen
class _StoreClock:
    """Storage time as a function of trio time: `t + offset`, plus the jumps so far."""

    offset: float
    jumps: tuple[tuple[float, float], ...]

    def trio_time(self, at: float) -> float:
        """The trio time storage's clock first read `at` (a jump's instant when the
        clock jumped over it)."""
        offset = self.offset
        for when, seconds in self.jumps:
            if at < when + offset:
                return at - offset
            offset += seconds
            if at < when + offset:
                return when
        return at - offset


def _unhealthy(result: RunResult, events: Iterable[Event]) -> dict[str, list[tuple[float, float]]]:
    """Per worker, the trio spans it was down (crashed or stopped until its next start)
    or cut off from storage (partition, isolation, message loss)."""
    spans: dict[str, list[tuple[float, float]]] = {
        f"worker{i + 1}": [] for i in range(result.spec.workers)}
    down_since: dict[str, float] = {}
    for ev in events:
        if not isinstance(ev, Fault) or ev.node not in spans:
            continue
        if ev.kind in ("crash", "stop"):
            down_since.setdefault(ev.node, ev.time)
        elif ev.kind == "start" and ev.node in down_since:
            spans[ev.node].append((down_since.pop(ev.node), ev.time))
    for node, since in down_since.items():
        spans[node].append((since, math.inf))
    for window in result.windows:
        if window.kind in _CUT:
            for node in spans if window.node is None else [window.node]:
                if node in spans:
                    spans[node].append((window.start, window.end))
    return spans


def _touches(spans: list[tuple[float, float]], start: float, end: float) -> bool:
    return any(a <= end and b >= start for a, b in spans)
