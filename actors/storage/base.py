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
- Retention: succeeded and cancelled jobs are purged `result_ttl_s` after they finish,
  with their idempotency keys. Dead jobs stay in the DLQ until purged from it.
- Bounded: a command holds at most `BATCH_MAX` items, a `limit` is 1..`LIMIT_MAX`, a
  lease request names 1..`QUEUES_MAX` queues. Bigger is a ValueError at construction.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import attrs

from gotask._job import JobRecord, LeaseToken, NewJob
from gotask.runtime.message import message

__all__ = [
    "BATCH_MAX",
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
    "Status",
    "StorageCommand",
    "StorageCore",
    "StorageReply",
]

#: Most items one command may carry.
BATCH_MAX = 10_000
#: Largest `limit` a command may ask for.
LIMIT_MAX = 10_000
#: Most queues one lease request may name.
QUEUES_MAX = 64

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Status(enum.StrEnum):
    """Per-item answers of the fenced commands."""

    OK = "ok"  # applied
    STALE = "stale"  # the token is not current: the worker must stop
    DUPLICATE = "duplicate"  # this token's ack/nack was already accepted; nothing changed
    CANCEL = "cancel"  # heartbeat applied, but cancellation was requested
    MISSING = "missing"  # no such job (never enqueued, or purged)


class Outcome(enum.StrEnum):
    """What a nack asks for."""

    RETRY = "retry"  # scheduled after retry_in_s, or dead when out of attempts
    DEAD = "dead"  # a non-retryable error: to the DLQ at once
    CANCELLED = "cancelled"  # the job honoured a cancellation


_OUTCOMES = frozenset(o.value for o in Outcome)


class Command(Generic[R_co]):
    """Base of every storage command; `R_co` is the type of its reply."""

    __slots__ = ()


def _batch(_inst: object, attribute: attrs.Attribute[Any], value: tuple[object, ...]) -> None:
    if len(value) > BATCH_MAX:
        raise ValueError(f"{attribute.name} holds {len(value)} items, more than {BATCH_MAX}")


def _optional_batch(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _batch(inst, attribute, value)


def _limit(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= LIMIT_MAX:
        raise ValueError(f"{attribute.name} must be 1-{LIMIT_MAX}, got {value}")


def _duration(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


# -- items -------------------------------------------------------------------------


@message("s.qweight")
@attrs.frozen
class QueueWeight:
    """A queue to lease from and its share (an integer >= 1) of the leases."""

    name: str
    weight: int = 1

    def __attrs_post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"weight of queue {self.name!r} must be >= 1, got {self.weight}")


@message("s.ack.item")
@attrs.frozen
class AckItem:
    """A successful attempt: the token and the msgpack-encoded result."""

    job_id: str
    attempt: int
    result: bytes


@message("s.nack.item")
@attrs.frozen
class NackItem:
    """A failed attempt and what to do next.

    `outcome` is an `Outcome` value; `retry_in_s` (>= 0, None = 0) is the delay before
    the next attempt when the outcome is "retry".
    """

    job_id: str
    attempt: int
    error_type: str
    error: str
    traceback: str
    retry_in_s: float | None = None
    outcome: str = Outcome.RETRY.value

    def __attrs_post_init__(self) -> None:
        if self.outcome not in _OUTCOMES:
            raise ValueError(
                f"outcome must be 'retry', 'dead' or 'cancelled', got {self.outcome!r}"
            )
        if self.retry_in_s is not None and not (
            self.retry_in_s >= 0 and math.isfinite(self.retry_in_s)
        ):
            raise ValueError(f"retry_in_s must be a finite number >= 0, got {self.retry_in_s}")


@message("s.prog.item")
@attrs.frozen
class ProgressItem:
    """Progress of a running attempt: a fraction in [0, 1] and a short message."""

    job_id: str
    attempt: int
    fraction: float
    message: str = ""

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {self.fraction}")


@message("s.qcount")
@attrs.frozen
class QueueCount:
    """How many jobs of one queue are in one state."""

    queue: str
    state: str
    count: int


@message("s.node")
@attrs.frozen
class NodeInfo:
    """A live node as the registry knows it; times on the storage clock."""

    node: str
    info: dict[str, Any]
    first_seen: float
    last_seen: float
    expires_at: float


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


# -- commands: the hot path ---------------------------------------------------------


@message("s.enqueue")
@attrs.frozen
class EnqueueJobs(Command[EnqueueReply]):
    """Store new jobs: `queued`, or `scheduled` when `delay_s > 0`.

    A known idempotency key (not yet purged) or a known id is a repeat: the reply gives
    the existing job's id with created=False and nothing changes.
    """

    jobs: tuple[NewJob, ...] = attrs.field(validator=_batch)


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
    """Extend current leases to `now + lease_timeout_s`; `node` is informational."""

    node: str
    tokens: tuple[LeaseToken, ...] = attrs.field(validator=_batch)
    lease_timeout_s: float = attrs.field(validator=_duration)


@message("s.ack")
@attrs.frozen
class AckJobs(Command[AckReply]):
    """Complete attempts successfully: `succeeded`, result kept `result_ttl_s` seconds."""

    items: tuple[AckItem, ...] = attrs.field(validator=_batch)


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
    """List jobs ordered by id after `after_id`, optionally of one queue and state."""

    queue: str | None = None
    state: str | None = None
    limit: int = attrs.field(default=100, validator=_limit)
    after_id: str | None = None


@message("s.count")
@attrs.frozen
class CountJobs(Command[CountJobsReply]):
    """Count jobs per (queue, state)."""


@message("s.requeue")
@attrs.frozen
class RequeueExpired(Command[RequeueExpiredReply]):
    """Handle up to `limit` expired leases, earliest first: the attempt was counted at
    lease, so the job is queued again (keeping its place), or dead when out of attempts
    (error_type "LeaseExpired"), or cancelled when cancellation was requested."""

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
)

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
)


class StorageCore(Protocol):
    """The pure core of a storage backend: no IO, no clock, no randomness."""

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply one command at storage time `now` (seconds) and return its reply.

        Raises:
            TypeError: `cmd` is not a storage command.
            StorageFull: a bounded collection of the backend is full.
        """
        ...
