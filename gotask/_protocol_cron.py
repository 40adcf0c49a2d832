"""The client protocol's cron requests (issue 15); `_protocol` re-exports them.

Rules of this module: those of `_protocol`. The Broker answers them from storage's cron
block and its own app: `ListCron` joins storage's entries (last fired tick, paused, the
last job) with what the answering node's app declares (expression, zone, next tick);
`RunCron` enqueues one job of an entry the answering node's app declares, now and
outside the schedule (no idempotency key: each run is a new job).
"""

from __future__ import annotations

import attrs

from gotask.runtime.message import Command, Ok, message

__all__ = ["CronEntryInfo", "CronListing", "ListCron", "PauseCron", "RunCron", "RunCronReply"]


@message("c.cron.entry")
@attrs.frozen
class CronEntryInfo:
    """One entry as `gotask cron list` shows it.

    `declared` is False for an entry stored but absent from the answering node's app
    (removed: it no longer fires there); `current` is False when that app's definition
    differs from the stored, newest one. `next_tick` is the first tick after `last_tick`
    (seconds since the epoch; None when the entry is not declared here).
    """

    name: str
    task: str | None
    schedule: str | None
    every_s: int | None
    zone: str | None
    declared: bool
    current: bool
    node: str
    registered_at: float
    last_tick: int
    next_tick: int | None
    paused: bool
    last_job: str | None
    last_job_state: str | None


@message("c.cron.rep")
@attrs.frozen
class CronListing:
    """Every stored cron entry, sorted by name."""

    entries: tuple[CronEntryInfo, ...]


@message("c.cron.run.rep")
@attrs.frozen
class RunCronReply:
    """The id of the job `RunCron` enqueued."""

    job_id: str


@message("c.cron.list")
@attrs.frozen
class ListCron(Command[CronListing]):
    """List the cron entries."""


@message("c.cron.pause")
@attrs.frozen
class PauseCron(Command[Ok]):
    """Pause (`paused=True`) or resume an entry, cluster-wide and durably. An unknown
    name is refused."""

    name: str
    paused: bool


@message("c.cron.run")
@attrs.frozen
class RunCron(Command[RunCronReply]):
    """Enqueue one job of entry `name` now, outside its schedule."""

    name: str
