"""The storage contract's commands, their base class and the limits they enforce.

Rules of this module: those of `base` (the contract), which re-exports every name here.
A command is checked at construction: too many items, a `limit` out of range or a bad
duration is a ValueError before it reaches any backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs

from gotask._errors import ResultTooLarge
from gotask._job import ARGS_BYTES_MAX, RESULT_BYTES_MAX, LeaseToken, NewJob
from gotask.runtime.message import Command, message

from ._base_cron import CronFire, CronList, CronRegister, CronSetPaused
from ._base_items import AckItem, NackItem, ProgressItem, QueueWeight
from ._base_queues import QueueInfo, SetQueuePaused
from ._base_replies import (
    AckReply,
    CancelReply,
    CountJobsReply,
    EnqueueReply,
    ExpireNodesReply,
    GetJobsReply,
    HeartbeatReply,
    LeaseReply,
    ListDeadReply,
    ListJobsReply,
    ListNodesReply,
    NackReply,
    ProgressReply,
    PromoteDueReply,
    PurgeDeadReply,
    PurgeExpiredReply,
    RegisterNodeReply,
    ReleaseReply,
    RequeueExpiredReply,
    RetryDeadReply,
)

__all__ = [
    "BATCH_MAX",
    "LIMIT_MAX",
    "QUEUES_MAX",
    "AckJobs",
    "CancelJobs",
    "Command",
    "CountJobs",
    "EnqueueJobs",
    "ExpireNodes",
    "GetJobs",
    "Heartbeat",
    "LeaseJobs",
    "ListDead",
    "ListJobs",
    "ListNodes",
    "NackJobs",
    "PromoteDue",
    "PurgeDead",
    "PurgeExpired",
    "RegisterNode",
    "ReleaseJobs",
    "ReportProgress",
    "RequeueExpired",
    "RetryDead",
    "StorageCommand",
]

#: Most items one command may carry.
BATCH_MAX = 10_000
#: Largest `limit` a command may ask for.
LIMIT_MAX = 10_000
#: Most queues one lease request may name.
QUEUES_MAX = 64

def _batch(_inst: object, attribute: attrs.Attribute[Any], value: tuple[object, ...]) -> None:
    if len(value) > BATCH_MAX:
        raise ValueError(f"{attribute.name} holds {len(value)} items, more than {BATCH_MAX}")


def _sized(size: Callable[[Any], int], limit: int, what: Callable[[Any, int], str],
           error: type[Exception]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """A validator of a batch whose items' `size` is at most `limit` bytes each."""
    def check(inst: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        _batch(inst, attribute, value)
        for index, item in enumerate(value):
            if (n := size(item)) > limit:
                raise error(f"item {index}: {what(item, n)}; the limit is {limit}")
    return check


_new_jobs = _sized(lambda job: len(job.args), ARGS_BYTES_MAX,
                   lambda job, n: f"arguments encode to {n} bytes", ValueError)
_acks = _sized(lambda item: len(item.result), RESULT_BYTES_MAX,
               lambda item, n: f"the result of job {item.job_id} is {n} bytes", ResultTooLarge)


def _optional_batch(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _batch(inst, attribute, value)


def _limit(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= LIMIT_MAX:
        raise ValueError(f"{attribute.name} must be 1-{LIMIT_MAX}, got {value}")


def _duration(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


# -- commands: the hot path ---------------------------------------------------------


@message("s.enqueue")
@attrs.frozen
class EnqueueJobs(Command[EnqueueReply]):
    """Store new jobs: `queued`, or `scheduled` when `delay_s > 0`.

    A known idempotency key (not yet purged) or a known id is a repeat: the reply gives
    the existing job's id with created=False and nothing changes.
    """

    jobs: tuple[NewJob, ...] = attrs.field(validator=_new_jobs)


@message("s.lease")
@attrs.frozen
class LeaseJobs(Command[LeaseReply]):
    """Lease up to `limit` due jobs from `queues` to `node` for `lease_timeout_s` seconds.

    Leasing sets `active`, `attempt += 1`, `leased_at`, `lease_node` and
    `lease_expires_at = now + lease_timeout_s`. Returns min(limit, due jobs) jobs.
    """

    node: str
    queues: tuple[QueueWeight, ...]
    limit: int = attrs.field(validator=_limit)
    lease_timeout_s: float = attrs.field(validator=_duration)

    def __attrs_post_init__(self) -> None:
        if not 0 < len(self.queues) <= QUEUES_MAX:
            raise ValueError(f"queues must name 1-{QUEUES_MAX} queues, got {len(self.queues)}")
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ValueError(f"queues must not repeat a name: {names!r}")


@message("s.beat")
@attrs.frozen
class Heartbeat(Command[HeartbeatReply]):
    """Extend current leases to `now + lease_timeout_s`; `node` is informational.

    With `started`, the worker also says these jobs started running: storage sets
    `started_attempt = attempt`, so a later expiry of that lease counts as `node_lost`.
    """

    node: str
    tokens: tuple[LeaseToken, ...] = attrs.field(validator=_batch)
    lease_timeout_s: float = attrs.field(validator=_duration)
    started: bool = False


@message("s.ack")
@attrs.frozen
class AckJobs(Command[AckReply]):
    """Complete attempts successfully: `succeeded`, result kept `result_ttl_s` seconds."""

    items: tuple[AckItem, ...] = attrs.field(validator=_acks)


@message("s.nack")
@attrs.frozen
class NackJobs(Command[NackReply]):
    """Fail attempts: retry (scheduled, or dead when out of attempts), dead or cancelled."""

    items: tuple[NackItem, ...] = attrs.field(validator=_batch)


@message("s.release")
@attrs.frozen
class ReleaseJobs(Command[ReleaseReply]):
    """Give leases back (graceful shutdown): queued at once in the job's old place,
    `releases += 1`, so the attempt does not count against `max_attempts`."""

    tokens: tuple[LeaseToken, ...] = attrs.field(validator=_batch)


@message("s.progress")
@attrs.frozen
class ReportProgress(Command[ProgressReply]):
    """Record the progress of running attempts (current tokens only)."""

    items: tuple[ProgressItem, ...] = attrs.field(validator=_batch)


# -- commands: control, queries, maintenance ------------------------------------------


@message("s.cancel")
@attrs.frozen
class CancelJobs(Command[CancelReply]):
    """Cancel jobs: queued or scheduled ones at once; active ones by request (the
    heartbeat tells the worker); terminal ones are left as they are."""

    ids: tuple[str, ...] = attrs.field(validator=_batch)


@message("s.get")
@attrs.frozen
class GetJobs(Command[GetJobsReply]):
    """Read jobs by id."""

    ids: tuple[str, ...] = attrs.field(validator=_batch)


@message("s.list")
@attrs.frozen
class ListJobs(Command[ListJobsReply]):
    """List jobs ordered by id after `after_id`, optionally of one queue, state and task."""

    queue: str | None = None
    state: str | None = None
    limit: int = attrs.field(default=100, validator=_limit)
    after_id: str | None = None
    task: str | None = None  # issue 16


@message("s.count")
@attrs.frozen
class CountJobs(Command[CountJobsReply]):
    """Count jobs per (queue, state)."""


@message("s.requeue")
@attrs.frozen
class RequeueExpired(Command[RequeueExpiredReply]):
    """Handle up to `limit` expired leases, earliest first. A lease whose job was known
    to start (`started_attempt == attempt`) ends `node_lost` (error_type "NodeLost") and
    counts. One never known to start ends `not_started` and costs no attempt
    (`releases` and `unstarted_expiries` += 1), unless `UNSTARTED_FREE_MAX` such expiries
    were free already: then it ends `lease_expired` (error_type "LeaseExpired") and
    counts. The job is queued again (keeping its place), or dead when out of attempts,
    or cancelled when cancellation was requested."""

    limit: int = attrs.field(default=1000, validator=_limit)


@message("s.promote")
@attrs.frozen
class PromoteDue(Command[PromoteDueReply]):
    """Make up to `limit` due scheduled jobs queued, earliest due first."""

    limit: int = attrs.field(default=1000, validator=_limit)


@message("s.purge")
@attrs.frozen
class PurgeExpired(Command[PurgeExpiredReply]):
    """Remove up to `limit` finished jobs whose `expires_at` has passed, with their keys."""

    limit: int = attrs.field(default=1000, validator=_limit)


@message("s.dlq.list")
@attrs.frozen
class ListDead(Command[ListDeadReply]):
    """List dead jobs ordered by id after `after_id`, optionally of one queue."""

    queue: str | None = None
    limit: int = attrs.field(default=100, validator=_limit)
    after_id: str | None = None


@message("s.dlq.retry")
@attrs.frozen
class RetryDead(Command[RetryDeadReply]):
    """Queue dead jobs again (all when `ids` is None) with `max_attempts` fresh attempts:
    `attempt_base` takes the attempts used so far; `attempt` keeps counting for fencing."""

    ids: tuple[str, ...] | None = attrs.field(default=None, validator=_optional_batch)


@message("s.dlq.purge")
@attrs.frozen
class PurgeDead(Command[PurgeDeadReply]):
    """Remove dead jobs (all when `ids` is None) and their idempotency keys."""

    ids: tuple[str, ...] | None = attrs.field(default=None, validator=_optional_batch)


@message("s.node.reg")
@attrs.frozen
class RegisterNode(Command[RegisterNodeReply]):
    """Register or renew a node; it counts as live until `now + ttl_s`."""

    node: str
    info: dict[str, Any]
    ttl_s: float = attrs.field(validator=_duration)


@message("s.node.list")
@attrs.frozen
class ListNodes(Command[ListNodesReply]):
    """List live nodes."""


@message("s.node.exp")
@attrs.frozen
class ExpireNodes(Command[ExpireNodesReply]):
    """Remove nodes whose registration lapsed."""


StorageCommand: TypeAlias = (
    LeaseJobs
    | AckJobs
    | Heartbeat
    | EnqueueJobs
    | NackJobs
    | ReportProgress
    | ReleaseJobs
    | CancelJobs
    | GetJobs
    | ListJobs
    | CountJobs
    | RequeueExpired
    | PromoteDue
    | PurgeExpired
    | ListDead
    | RetryDead
    | PurgeDead
    | RegisterNode
    | ListNodes
    | ExpireNodes
    # -- cron (issue 15) --
    | CronRegister
    | CronFire
    | CronList
    | CronSetPaused
    # -- queues (issue 16) --
    | SetQueuePaused
    | QueueInfo
)
