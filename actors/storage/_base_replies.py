"""The storage contract's replies: one type per command, each answering a whole batch.

Rules of this module: those of `base` (the contract), which re-exports every name here.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from gotask._job import JobRecord
from gotask.runtime.message import message

from ._base_cron import (
    CronFireReply,
    CronListReply,
    CronRegisterReply,
    CronSetPausedReply,
)
from ._base_items import NodeInfo, QueueCount
from ._base_queues import QueueInfoReply, SetQueuePausedReply

__all__ = [
    "AckReply",
    "CancelReply",
    "CountJobsReply",
    "EnqueueReply",
    "ExpireNodesReply",
    "GetJobsReply",
    "HeartbeatReply",
    "LeaseReply",
    "ListDeadReply",
    "ListJobsReply",
    "ListNodesReply",
    "NackReply",
    "ProgressReply",
    "PromoteDueReply",
    "PurgeDeadReply",
    "PurgeExpiredReply",
    "RegisterNodeReply",
    "ReleaseReply",
    "RequeueExpiredReply",
    "RetryDeadReply",
    "StorageReply",
]


# -- replies ------------------------------------------------------------------------


@message("s.enqueue.rep")
@attrs.frozen
class EnqueueReply:
    """Per job: its id (the existing one for a repeat) and whether it was created."""

    ids: tuple[str, ...]
    created: tuple[bool, ...]


@message("s.lease.rep")
@attrs.frozen
class LeaseReply:
    """The jobs leased, in the order they were picked."""

    jobs: tuple[JobRecord, ...]


@message("s.beat.rep")
@attrs.frozen
class HeartbeatReply:
    """Per token "ok", "stale" or "cancel"; the new expiry of the extended leases."""

    statuses: tuple[str, ...]
    lease_expires_at: float


@message("s.ack.rep")
@attrs.frozen
class AckReply:
    """Per item "ok", "stale" or "duplicate"."""

    statuses: tuple[str, ...]


@message("s.nack.rep")
@attrs.frozen
class NackReply:
    """Per item "ok", "stale" or "duplicate", and the job's state after ("missing")."""

    statuses: tuple[str, ...]
    states: tuple[str, ...]


@message("s.release.rep")
@attrs.frozen
class ReleaseReply:
    """Per token "ok", "stale" or "duplicate", and the job's state after ("missing")."""

    statuses: tuple[str, ...]
    states: tuple[str, ...]


@message("s.progress.rep")
@attrs.frozen
class ProgressReply:
    """Per item whether the progress was recorded (only for a current token)."""

    accepted: tuple[bool, ...]


@message("s.cancel.rep")
@attrs.frozen
class CancelReply:
    """Per id the job's state after: "cancelled", "active" (requested), or "missing"."""

    states: tuple[str, ...]


@message("s.get.rep")
@attrs.frozen
class GetJobsReply:
    """Per id the job, or None when missing."""

    jobs: tuple[JobRecord | None, ...]


@message("s.list.rep")
@attrs.frozen
class ListJobsReply:
    """A page of jobs ordered by id; `next_after` continues the listing (None: done)."""

    jobs: tuple[JobRecord, ...]
    next_after: str | None


@message("s.count.rep")
@attrs.frozen
class CountJobsReply:
    """Non-zero job counts per (queue, state), sorted by queue then state."""

    counts: tuple[QueueCount, ...]


@message("s.requeue.rep")
@attrs.frozen
class RequeueExpiredReply:
    """Jobs whose lease expired, by where they went."""

    requeued: tuple[str, ...]
    dead: tuple[str, ...]
    cancelled: tuple[str, ...]


@message("s.promote.rep")
@attrs.frozen
class PromoteDueReply:
    """How many scheduled jobs became queued."""

    promoted: int


@message("s.purge.rep")
@attrs.frozen
class PurgeExpiredReply:
    """How many finished jobs were removed."""

    purged: int


@message("s.dlq.list.rep")
@attrs.frozen
class ListDeadReply:
    """A page of dead jobs ordered by id; `next_after` continues (None: done)."""

    jobs: tuple[JobRecord, ...]
    next_after: str | None


@message("s.dlq.retry.rep")
@attrs.frozen
class RetryDeadReply:
    """How many dead jobs were queued again."""

    requeued: int


@message("s.dlq.purge.rep")
@attrs.frozen
class PurgeDeadReply:
    """How many dead jobs were removed."""

    purged: int


@message("s.node.reg.rep")
@attrs.frozen
class RegisterNodeReply:
    """When the registration lapses unless renewed (storage clock)."""

    expires_at: float


@message("s.node.list.rep")
@attrs.frozen
class ListNodesReply:
    """Live nodes, sorted by name."""

    nodes: tuple[NodeInfo, ...]


@message("s.node.exp.rep")
@attrs.frozen
class ExpireNodesReply:
    """Names of the nodes removed because their registration lapsed."""

    removed: tuple[str, ...]


StorageReply: TypeAlias = (
    LeaseReply
    | AckReply
    | HeartbeatReply
    | EnqueueReply
    | NackReply
    | ProgressReply
    | ReleaseReply
    | CancelReply
    | GetJobsReply
    | ListJobsReply
    | CountJobsReply
    | RequeueExpiredReply
    | PromoteDueReply
    | PurgeExpiredReply
    | ListDeadReply
    | RetryDeadReply
    | PurgeDeadReply
    | RegisterNodeReply
    | ListNodesReply
    | ExpireNodesReply
    # -- cron (issue 15) --
    | CronRegisterReply
    | CronFireReply
    | CronListReply
    | CronSetPausedReply
    # -- queues (issue 16) --
    | SetQueuePausedReply
    | QueueInfoReply
)
