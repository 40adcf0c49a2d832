"""The storage contract: the commands every backend answers, and what they guarantee.

Storage is the only writer of job state. Every backend (memory, Redis, PostgreSQL)
implements the same commands, with the same replies, and passes the same conformance
suite (tests/storage/contract.py). The rules:

- Batched: every command carries many items and answers them all in one reply; the hot
  path (lease, heartbeat, ack, nack) is never one round trip per job.
- One clock: every time is read from the storage's own clock (`now`), never a node's.
  Durations are seconds; an instant `t` has passed when `t <= now`.
- Fencing: a lease token `(job_id, attempt)` is current while the job is `active` with
  that attempt, even past its expiry until a reaper requeues it (no one else holds the
  job). Only a current token may heartbeat, ack, nack, release or report progress. A
  token whose ack or nack was accepted answers "duplicate" to a repeat; others "stale".
- At most one accepted completion: ack and nack settle a token once; a job succeeds once.
- Ready order: within a queue, higher priority first; within a priority, earlier due
  time first (an immediate job is due when enqueued), then enqueue order. A released or
  expired job keeps its place; a retried or DLQ-revived job is due anew. A scheduled job
  whose due time has passed is leasable whether or not it was promoted yet.
- Fairness: across the queues of one lease request, smooth weighted round robin per node
  over its successive leases, among the queues that have ready jobs.
- Cancellation wins: a job whose cancellation was requested never runs again; where it
  would return to queued or scheduled (retry, release, lease expiry) it is cancelled.
- Exhaustion: a job is out of attempts when `attempt - releases - attempt_base >=
  max_attempts`; a retry or a lease expiry then sends it to the DLQ (`dead`).
- Attempts count only what ran: a lease that expires before a heartbeat said its job
  started costs no attempt, at most `UNSTARTED_FREE_MAX` times per job (so a job that
  kills its process before its start is stored still ends in the DLQ).
- History: the write that ends an attempt (ack, nack, release, lease expiry) appends its
  `AttemptRecord` to the job, keeping the last `HISTORY_MAX`.
- Retention: succeeded and cancelled jobs are purged `result_ttl_s` after they finish,
  with their idempotency keys. Dead jobs stay in the DLQ until purged from it.
- Bounded: a command holds at most `BATCH_MAX` items, a `limit` is 1..`LIMIT_MAX`, a
  lease request names 1..`QUEUES_MAX` queues; a new job's arguments are at most
  `ARGS_BYTES_MAX` bytes and an acknowledged result at most `RESULT_BYTES_MAX` (the
  store's own check: workers and the Broker check the node's lower settings first).
  Bigger is a ValueError at construction, so also where a command is decoded.

The messages live in `_base_items` (statuses and items), `_base_replies` and
`_base_commands` (with the limits), the cron block (`_base_cron`) and the queue block
(`_base_queues`: paused queues); this module re-exports them all and defines the
`StorageCore` protocol.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from gotask._job import LeaseToken

from ._base_commands import (
    BATCH_MAX,
    LIMIT_MAX,
    QUEUES_MAX,
    AckJobs,
    CancelJobs,
    Command,
    CountJobs,
    EnqueueJobs,
    ExpireNodes,
    GetJobs,
    Heartbeat,
    LeaseJobs,
    ListDead,
    ListJobs,
    ListNodes,
    NackJobs,
    PromoteDue,
    PurgeDead,
    PurgeExpired,
    RegisterNode,
    ReleaseJobs,
    ReportProgress,
    RequeueExpired,
    RetryDead,
    StorageCommand,
)
from ._base_cron import (
    CRON_EARLY,
    CRON_FIRED,
    CRON_MISSING,
    CRON_PAUSED,
    CRON_STALE,
    CronDef,
    CronFire,
    CronFireReply,
    CronList,
    CronListReply,
    CronRegister,
    CronRegisterReply,
    CronSetPaused,
    CronSetPausedReply,
    CronState,
)
from ._base_items import (
    AckItem,
    NackItem,
    NodeInfo,
    Outcome,
    ProgressItem,
    QueueCount,
    QueueWeight,
    Status,
)
from ._base_queues import (
    QueueInfo,
    QueueInfoReply,
    QueueReadySince,
    SetQueuePaused,
    SetQueuePausedReply,
)
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
    StorageReply,
)

__all__ = [
    "BATCH_MAX",
    "CRON_EARLY",
    "CRON_FIRED",
    "CRON_MISSING",
    "CRON_PAUSED",
    "CRON_STALE",
    "LIMIT_MAX",
    "QUEUES_MAX",
    "AckItem",
    "AckJobs",
    "AckReply",
    "CancelJobs",
    "CancelReply",
    "Command",
    "CountJobs",
    "CountJobsReply",
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
    "EnqueueJobs",
    "EnqueueReply",
    "ExpireNodes",
    "ExpireNodesReply",
    "GetJobs",
    "GetJobsReply",
    "Heartbeat",
    "HeartbeatReply",
    "LeaseJobs",
    "LeaseReply",
    "LeaseToken",
    "ListDead",
    "ListDeadReply",
    "ListJobs",
    "ListJobsReply",
    "ListNodes",
    "ListNodesReply",
    "NackItem",
    "NackJobs",
    "NackReply",
    "NodeInfo",
    "Outcome",
    "ProgressItem",
    "ProgressReply",
    "PromoteDue",
    "PromoteDueReply",
    "PurgeDead",
    "PurgeDeadReply",
    "PurgeExpired",
    "PurgeExpiredReply",
    "QueueCount",
    "QueueInfo",
    "QueueInfoReply",
    "QueueReadySince",
    "QueueWeight",
    "RegisterNode",
    "RegisterNodeReply",
    "ReleaseJobs",
    "ReleaseReply",
    "ReportProgress",
    "RequeueExpired",
    "RequeueExpiredReply",
    "RetryDead",
    "RetryDeadReply",
    "SetQueuePaused",
    "SetQueuePausedReply",
    "Status",
    "StorageCommand",
    "StorageCore",
    "StorageReply",
]

R = TypeVar("R")


class StorageCore(Protocol):
    """The pure core of a storage backend: no IO, no clock, no randomness."""

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply one command at storage time `now` (seconds) and return its reply.

        Raises:
            TypeError: `cmd` is not a storage command.
            StorageFull: a bounded collection of the backend is full.
        """
        ...
