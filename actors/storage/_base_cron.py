"""The storage contract's cron block (issue 15): entries, their last fired tick, pause.

Rules of this module: those of `base` (the contract), which re-exports every name here,
and these:
- An entry is a name, an opaque definition text, the node and storage time of its
  newest registration, its last fired tick (whole seconds), its paused flag and the id
  of the last job it fired. Registration keeps the last fired tick and paused flag; a
  new entry's last fired tick is the registration time (floored): nothing before it is
  due. The newest registration's definition wins; a changed one is reported.
- `CronFire` is the compare-and-set that makes a tick fire once across all nodes: it
  applies only while the stored last fired tick equals `expected`, and then atomically
  stores `tick` and enqueues `jobs` (as `EnqueueJobs` would) unless the entry is paused
  (a paused entry's ticks pass unfired). Otherwise nothing changes ("stale").
- Ticks are judged on the storage clock: a fire of a tick after storage's now is refused
  ("early", nothing changes), whatever the firing node's clock says. Every fire reply
  carries storage's now, from which a node keeps its estimate of the storage clock.
"""

from __future__ import annotations

import attrs

from gotask._job import NewJob
from gotask.runtime.message import Command, message

__all__ = [
    "CRON_EARLY",
    "CRON_FIRED",
    "CRON_MISSING",
    "CRON_PAUSED",
    "CRON_STALE",
    "CronDef",
    "CronFire",
    "CronFireReply",
    "CronList",
    "CronListReply",
    "CronRegister",
    "CronRegisterReply",
    "CronSetPaused",
    "CronSetPausedReply",
    "CronState",
]

CRON_FIRED = "fired"
CRON_EARLY = "early"
CRON_PAUSED = "paused"
CRON_STALE = "stale"
CRON_MISSING = "missing"
#: Most entries one registration or listing carries.
CRON_MAX = 100_000


def _entries(_inst: object, _attr: object, value: tuple[CronDef, ...]) -> None:
    if len(value) > CRON_MAX:
        raise ValueError(f"{len(value)} cron entries, more than {CRON_MAX}")
    if len({entry.name for entry in value}) != len(value):
        raise ValueError("a cron entry is named twice in one registration")


@message("s.cron.def")
@attrs.frozen
class CronDef:
    """An entry as a node's app declares it: its name and definition text."""

    name: str
    definition: str


@message("s.cron.state")
@attrs.frozen
class CronState:
    """An entry as storage holds it."""

    name: str
    definition: str
    node: str
    registered_at: float
    last_tick: int
    paused: bool
    last_job: str | None


@message("s.cron.reg.rep")
@attrs.frozen
class CronRegisterReply:
    """The registered entries' states (in the order given); the names whose stored
    definition differed (now replaced); the stored names this registration lacks."""

    states: tuple[CronState, ...]
    changed: tuple[str, ...]
    unknown: tuple[str, ...]


@message("s.cron.reg")
@attrs.frozen
class CronRegister(Command[CronRegisterReply]):
    """Register `node`'s cron entries at storage time (see the module's rules)."""

    node: str
    entries: tuple[CronDef, ...] = attrs.field(validator=_entries)


@message("s.cron.fire.rep")
@attrs.frozen
class CronFireReply:
    """`fired`, `paused`, `stale`, `early` or `missing`; the stored last fired tick after
    the command (None when missing); the ids of the jobs enqueued (empty unless fired);
    the storage time of the command."""

    outcome: str
    last_tick: int | None
    ids: tuple[str, ...]
    now: float


@message("s.cron.fire")
@attrs.frozen
class CronFire(Command[CronFireReply]):
    """Advance `name`'s last fired tick from `expected` to `tick` and enqueue `jobs`."""

    name: str
    expected: int
    tick: int
    jobs: tuple[NewJob, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.tick <= self.expected:
            raise ValueError(f"cron tick {self.tick} is not after {self.expected}")
        if len(self.jobs) > 10_000:
            raise ValueError(f"{len(self.jobs)} jobs for one cron tick, more than 10000")


@message("s.cron.list.rep")
@attrs.frozen
class CronListReply:
    """Every stored entry, sorted by name."""

    states: tuple[CronState, ...]


@message("s.cron.list")
@attrs.frozen
class CronList(Command[CronListReply]):
    """List the stored cron entries."""


@message("s.cron.pause.rep")
@attrs.frozen
class CronSetPausedReply:
    """Whether the entry exists (and so was set)."""

    found: bool


@message("s.cron.pause")
@attrs.frozen
class CronSetPaused(Command[CronSetPausedReply]):
    """Pause (or resume) an entry, cluster-wide and durably."""

    name: str
    paused: bool
