"""Cron entries: recurring jobs declared next to tasks (issue 15).

Rules of this module:
- An entry is checked when it is declared (at app load): a bad cron expression, an
  unknown IANA zone, a bad interval, misfire policy or jitter is a ValueError that names
  the entry. Cron expressions are parsed and evaluated by cronsim, never by hand.
- Ticks are instants in whole seconds since the epoch. A cron entry's ticks are those
  cronsim yields in the entry's zone (daylight-saving time as cronsim defines it: a
  time in a skipped hour fires at the first valid instant after it; a fixed time in a
  repeated hour fires once, its first pass; a wildcard hour fires in both passes), and
  never one at or before the instant asked about;
  an interval entry's ticks are the multiples of `every_s` since the epoch, so every
  node computes the same ticks.
- `due_ticks(last, now)` decides which ticks to fire, purely, from the last fired tick
  and the storage clock: `skip` fires only a tick within `grace_s` of now, `once` fires
  the latest due tick for all missed ones, `all` fires every due tick, at most
  `misfire_limit` (the latest ones). A never-fired entry starts at its registration:
  nothing before it is due.
- `definition()` is a canonical string of everything that makes the entry: two nodes
  with different definitions of one name are reported by storage.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs
import cronsim

__all__ = ["MISFIRE_POLICIES", "CronEntry", "cron_key", "make_entry"]

MISFIRE_POLICIES = ("skip", "once", "all")
Misfire = Literal["skip", "once", "all"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
#: How late a tick may be and still count as on time under `skip`.
GRACE_S = 60.0
#: Most ticks `all` fires at once after an outage.
MISFIRE_LIMIT = 100


def cron_key(name: str, tick: int) -> str:
    """The idempotency key of the job an entry fires for `tick`."""
    return f"cron:{name}:{tick}"


@attrs.frozen
class CronEntry:
    """A recurring job: which task to enqueue, with what, and when.

    Exactly one of `schedule` (a cron expression) and `every_s` (a fixed interval in
    seconds) is set. Build one with `App.cron` / `App.add_cron` (they check it).
    """

    name: str
    task: str
    schedule: str | None = None
    every_s: int | None = None
    zone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.Factory(dict)
    queue: str | None = None
    priority: int | None = None
    options: Mapping[str, Any] = attrs.Factory(dict)
    misfire: Misfire = "once"
    misfire_limit: int = MISFIRE_LIMIT
    grace_s: float = GRACE_S
    jitter_s: float = 0.0

    def definition(self) -> str:
        """A canonical text of the whole entry; equal entries give equal texts."""
        return json.dumps(
            [self.task, self.schedule, self.every_s, self.zone, list(self.args),
             dict(self.kwargs), self.queue, self.priority, dict(self.options),
             self.misfire, self.misfire_limit, self.grace_s, self.jitter_s],
            sort_keys=True, default=repr)

    def ticks_after(self, t: float) -> Iterator[int]:
        """Every tick strictly after `t`, in order (an endless iterator)."""
        if self.every_s is not None:
            step = self.every_s
            tick = (math.floor(t) // step + 1) * step
            while True:
                yield tick
                tick += step
        assert self.schedule is not None
        zone = zoneinfo.ZoneInfo(self.zone)
        start = dt.datetime.fromtimestamp(math.floor(t), zone)
        for when in cronsim.CronSim(self.schedule, start):
            tick = int(when.timestamp())
            if tick > t:  # started inside a repeated hour, cronsim may yield its first pass
                yield tick

    def next_tick(self, t: float) -> int:
        """The first tick strictly after `t`."""
        return next(self.ticks_after(t))

    def due_ticks(self, last: int, now: float) -> tuple[list[int], int]:
        """The ticks to fire now and the new last fired tick, given the last one.

        Returns ([], last) when no tick in (last, now] is due.
        """
        due: list[int] = []
        for tick in self.ticks_after(last):
            if tick > now:
                break
            due.append(tick)
            if self.misfire != "all" and len(due) > 1:
                due.pop(0)  # keep only the latest: a cron gap can be huge
        if not due:
            return [], last
        newest = due[-1]
        if self.misfire == "skip":
            return ([newest] if now - newest <= self.grace_s else []), newest
        if self.misfire == "once":
            return [newest], newest
        return due[-self.misfire_limit:], newest

    def jitter_for(self, tick: int) -> float:
        """Seconds to delay the job of `tick`: the same on every node, in [0, jitter_s)."""
        if self.jitter_s <= 0:
            return 0.0
        digest = hash_text(f"{self.name}:{tick}")
        return (digest % 1_000_000) / 1_000_000 * self.jitter_s


def hash_text(text: str) -> int:
    """A stable (not per-process salted) 32-bit hash of `text` (FNV-1a)."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def make_entry(
    name: str, task: str, *, schedule: str | None = None, every_s: float | None = None,
    zone: str = "UTC", args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None, priority: int | None = None,
    options: Mapping[str, Any] | None = None, misfire: str = "once",
    misfire_limit: int = MISFIRE_LIMIT, grace_s: float = GRACE_S, jitter_s: float = 0.0,
) -> CronEntry:
    """Check every field and build a `CronEntry`.

    Raises:
        ValueError: a field is invalid; the message names the entry.
    """
    def refuse(why: str) -> ValueError:
        return ValueError(f"cron entry {name!r}: {why}")

    if not _NAME.match(name):
        raise ValueError(f"invalid cron entry name {name!r}")
    if (schedule is None) == (every_s is None):
        raise refuse("give exactly one of a cron expression or every_s")
    if every_s is not None and not (
        isinstance(every_s, int | float) and not isinstance(every_s, bool)
        and every_s >= 1 and float(every_s).is_integer()
    ):
        raise refuse(f"every_s must be a whole number of seconds >= 1, got {every_s!r}")
    _check_zone(zone, refuse)
    if schedule is not None:
        _check_schedule(schedule, refuse)
    if misfire not in MISFIRE_POLICIES:
        raise refuse(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {misfire!r}")
    if not (isinstance(misfire_limit, int) and 1 <= misfire_limit <= 10_000):
        raise refuse(f"misfire_limit must be an int in 1..10000, got {misfire_limit!r}")
    for label, value in (("grace_s", grace_s), ("jitter_s", jitter_s)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise refuse(f"{label} must be a number >= 0, got {value!r}")
    return CronEntry(
        name=name, task=task, schedule=schedule,
        every_s=int(every_s) if every_s is not None else None, zone=zone,
        args=tuple(args), kwargs=dict(kwargs or {}), queue=queue, priority=priority,
        options=dict(options or {}), misfire=misfire,  # type: ignore[arg-type]
        misfire_limit=misfire_limit, grace_s=float(grace_s), jitter_s=float(jitter_s))


def _check_zone(zone: str, refuse: Any) -> None:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise refuse(f"unknown time zone {zone!r} (use an IANA name)") from None


def _check_schedule(schedule: str, refuse: Any) -> None:
    if not isinstance(schedule, str):
        raise refuse(f"the cron expression must be a string, got {schedule!r}")
    try:
        next(cronsim.CronSim(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    except (cronsim.CronSimError, StopIteration) as exc:
        raise refuse(f"invalid cron expression {schedule!r}: {exc}") from None
