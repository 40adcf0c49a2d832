"""The Broker's cron translation (issue 15), pure: client cron requests to storage's
cron block and back.

Rules of this module: those of `_broker_core`. `ListCron` takes two storage calls (the
entries, then their last jobs' states) and joins them with the node's app; `PauseCron`
is `CronSetPaused` (an unknown name is `CronEntryNotFound`); `RunCron` builds the job
as the Scheduler would (task defaults, entry overrides) without an idempotency key and
stores it with `EnqueueJobs`.
"""

from __future__ import annotations

from collections.abc import Callable

from gotask import _protocol as proto
from gotask._app import App, pack_args
from gotask._errors import CronEntryNotFound
from gotask._job import JobRecord, NewJob

from ._scheduler_cron import CronJobDefaults, build_job
from .storage import base as storage

__all__ = ["cron_listing", "run_job"]


def cron_listing(app: App, states: tuple[storage.CronState, ...],
                 jobs: dict[str, JobRecord | None]) -> proto.CronListing:
    """The client's listing: storage's entries, the app's view of each, job states."""
    declared = {entry.name: entry for entry in app.cron_entries()}
    out = []
    for s in states:
        entry = declared.get(s.name)
        job = jobs.get(s.last_job) if s.last_job is not None else None
        out.append(proto.CronEntryInfo(
            name=s.name, task=entry.task if entry else None,
            schedule=entry.schedule if entry else None,
            every_s=entry.every_s if entry else None, zone=entry.zone if entry else None,
            declared=entry is not None,
            current=entry is not None and entry.definition() == s.definition,
            node=s.node, registered_at=s.registered_at, last_tick=s.last_tick,
            next_tick=entry.next_tick(s.last_tick) if entry else None, paused=s.paused,
            last_job=s.last_job, last_job_state=str(job.state) if job else None))
    return proto.CronListing(tuple(out))


def run_job(app: App, name: str, new_id: Callable[[], str]) -> NewJob:
    """The job `RunCron` stores for entry `name`.

    Raises:
        CronEntryNotFound: the app declares no entry `name`.
    """
    entry = next((e for e in app.cron_entries() if e.name == name), None)
    if entry is None:
        raise CronEntryNotFound(f"no cron entry {name!r} in app {app.name!r}")
    task = app.get(entry.task)
    defaults = CronJobDefaults(task.queue, task.priority, task.max_attempts, task.timeout_s,
                               task.result_ttl_s)
    return build_job(entry, defaults, pack_args(entry.args, entry.kwargs), new_id(), None)
