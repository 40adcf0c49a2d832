"""The client protocol: what every face of GoTask asks a node's Broker, and its answers.

Rules of this module:
- This is the one definition of the client protocol. The TCP clients, the CLI and, next,
  REST, gRPC and the console speak it; the Broker translates it into storage's contract
  (`gotask.actors.storage.base`), which no face ever sees. It imports neither trio nor
  any actor.
- Every request is a `Command[R]`: its reply is an `R` (a failure comes back as
  `ErrorReply` naming a class of `gotask._errors`). Every request is safe to decode from
  anyone: its fields are checked at construction, so a bad value is refused where the
  message is made (the client) and again where it is decoded (the node), naming the field.
- Tags start with "c.". Lists page with an opaque `cursor`: pass the `cursor` of a page to
  get the next one; None in a reply means there is no more.
- The Broker pushes `JobChanged` to the address given in `WatchJobs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs

from gotask._app import pack_args
from gotask._job import JobRecord, check_job_fields
from gotask._protocol_cron import (
    CronEntryInfo,
    CronListing,
    ListCron,
    PauseCron,
    RunCron,
    RunCronReply,
)
from gotask.runtime.message import Address, Command, Ok, message

__all__ = [
    "IDS_MAX",
    "LIMIT_MAX",
    "REQUESTS",
    "WAIT_S_MAX",
    "CancelJobs",
    "CancelReply",
    "ClientRequest",
    "CountQueues",
    "CountReply",
    "CronEntryInfo",
    "CronListing",
    "Enqueue",
    "EnqueueReply",
    "GetJobs",
    "JobChanged",
    "JobPage",
    "JobSpec",
    "JobsReply",
    "ListCron",
    "ListDead",
    "ListJobs",
    "ListNodes",
    "NodeInfo",
    "NodesReply",
    "PauseCron",
    "PauseQueue",
    "PauseWorkers",
    "PurgeDead",
    "QueueAge",
    "QueueCount",
    "QueuesReply",
    "RetryDead",
    "RunCron",
    "RunCronReply",
    "UnwatchJobs",
    "WaitJobs",
    "WatchJobs",
    "check_spec",
]

#: Most jobs or ids one request may carry.
IDS_MAX: Final = 10_000
#: Largest page a list request may ask for.
LIMIT_MAX: Final = 10_000
#: Longest one `WaitJobs` may wait, in seconds (a client loops for longer waits).
WAIT_S_MAX: Final = 3600.0


def _ids(_inst: object, attribute: attrs.Attribute[Any], value: tuple[object, ...] | None) -> None:
    if value is not None and len(value) > IDS_MAX:
        raise ValueError(f"{attribute.name} holds {len(value)} items, more than {IDS_MAX}")


def _limit(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= LIMIT_MAX:
        raise ValueError(f"{attribute.name} must be 1-{LIMIT_MAX}, got {value}")


# -- values ----------------------------------------------------------------------------


@message("c.spec")
@attrs.frozen
class JobSpec:
    """One job a client asks for; None options take the task's defaults.

    Args:
        task: the registered task name. args: msgpack `[args_list, kwargs_map]`
            (`pack_args`), delivered byte-identical.
        queue, priority, delay_s, max_attempts, timeout_s, result_ttl_s,
        idempotency_key: as `AsyncClient.enqueue` documents them.

    Raises:
        ValueError: an option is out of range (the message names it).
    """

    task: str
    args: bytes
    queue: str | None = None
    priority: int | None = None
    delay_s: float = 0.0
    max_attempts: int | None = None
    timeout_s: float | None = None
    result_ttl_s: float | None = None
    idempotency_key: str | None = None

    def __attrs_post_init__(self) -> None:
        check_job_fields(task=self.task, queue=self.queue, priority=self.priority,
                         delay_s=self.delay_s, max_attempts=self.max_attempts,
                         timeout_s=self.timeout_s, result_ttl_s=self.result_ttl_s,
                         idempotency_key=self.idempotency_key, args=self.args)


@message("c.qcount")
@attrs.frozen
class QueueCount:
    """How many jobs of `queue` are in `state`."""

    queue: str
    state: str
    count: int


@message("c.qage")
@attrs.frozen
class QueueAge:
    """How long (seconds, on the storage's clock) the oldest ready job of `queue` has
    been due and waiting."""

    queue: str
    age_s: float


@message("c.node")
@attrs.frozen
class NodeInfo:
    """A live node of the cluster; times are seconds on the storage's clock."""

    node: str
    info: dict[str, Any]
    first_seen: float
    last_seen: float
    expires_at: float


# -- replies ---------------------------------------------------------------------------


@message("c.enqueue.rep")
@attrs.frozen
class EnqueueReply:
    """Per job in order: its id (the first job's for a known idempotency key), and
    whether this request created it."""

    ids: tuple[str, ...]
    created: tuple[bool, ...]


@message("c.jobs.rep")
@attrs.frozen
class JobsReply:
    """Per id asked for, the job's record, or None when there is no such job."""

    jobs: tuple[JobRecord | None, ...]


@message("c.page.rep")
@attrs.frozen
class JobPage:
    """A page of jobs ordered by id; `cursor` asks for the next page (None: no more)."""

    jobs: tuple[JobRecord, ...]
    cursor: str | None


@message("c.cancel.rep")
@attrs.frozen
class CancelReply:
    """Per id the job's state after: "cancelled", "active" (asked to stop), a terminal
    state it already had, or "missing"."""

    states: tuple[str, ...]


@message("c.count.rep")
@attrs.frozen
class CountReply:
    """How many jobs a DLQ retry or purge moved."""

    count: int


@message("c.queues.rep")
@attrs.frozen
class QueuesReply:
    """Non-zero job counts per (queue, state), sorted by queue then state; the paused
    queues, sorted (a paused queue may hold no job); the age of each queue's oldest
    ready job, for the queues with queued jobs, sorted by queue."""

    counts: tuple[QueueCount, ...]
    paused: tuple[str, ...] = ()
    oldest_ready: tuple[QueueAge, ...] = ()


@message("c.nodes.rep")
@attrs.frozen
class NodesReply:
    """Live nodes, sorted by name."""

    nodes: tuple[NodeInfo, ...]


# -- requests --------------------------------------------------------------------------


@message("c.enqueue")
@attrs.frozen
class Enqueue(Command[EnqueueReply]):
    """Enqueue jobs, all or none: a job the node refuses (unknown task, arguments that
    do not fit it) fails the whole request, and the error names its index."""

    jobs: tuple[JobSpec, ...] = attrs.field(validator=_ids)


@message("c.get")
@attrs.frozen
class GetJobs(Command[JobsReply]):
    """Read jobs by id."""

    ids: tuple[str, ...] = attrs.field(validator=_ids)


@message("c.wait")
@attrs.frozen
class WaitJobs(Command[JobsReply]):
    """Answer once every job is terminal (or missing), or after `timeout_s` seconds
    (0 to `WAIT_S_MAX`) with the records as they are then."""

    ids: tuple[str, ...] = attrs.field(validator=_ids)
    timeout_s: float

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.timeout_s <= WAIT_S_MAX and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be between 0 and {WAIT_S_MAX:g}, "
                             f"got {self.timeout_s}")


@message("c.watch")
@attrs.frozen
class WatchJobs(Command[JobsReply]):
    """Push `JobChanged` to `watcher` on every change of these jobs (state, progress)
    until each is terminal. Answered with the current records, so no change made before
    the watch began is missed."""

    ids: tuple[str, ...] = attrs.field(validator=_ids)
    watcher: Address


@message("c.unwatch")
@attrs.frozen
class UnwatchJobs(Command[Ok]):
    """Stop pushing changes of these jobs to `watcher`."""

    ids: tuple[str, ...] = attrs.field(validator=_ids)
    watcher: Address


@message("c.cancel")
@attrs.frozen
class CancelJobs(Command[CancelReply]):
    """Cancel jobs: queued or scheduled ones at once, running ones at their next
    heartbeat; finished ones are left as they are."""

    ids: tuple[str, ...] = attrs.field(validator=_ids)


@message("c.list")
@attrs.frozen
class ListJobs(Command[JobPage]):
    """A page of jobs ordered by id, optionally of one queue, one state and one task."""

    queue: str | None = None
    state: str | None = None
    limit: int = attrs.field(default=100, validator=_limit)
    cursor: str | None = None
    task: str | None = None  # issue 16

    def __attrs_post_init__(self) -> None:
        check_job_fields(queue=self.queue, task=self.task)


@message("c.dlq.list")
@attrs.frozen
class ListDead(Command[JobPage]):
    """A page of dead jobs ordered by id, optionally of one queue."""

    queue: str | None = None
    limit: int = attrs.field(default=100, validator=_limit)
    cursor: str | None = None


@message("c.dlq.retry")
@attrs.frozen
class RetryDead(Command[CountReply]):
    """Queue dead jobs again with fresh attempts (every dead job when `ids` is None)."""

    ids: tuple[str, ...] | None = attrs.field(default=None, validator=_ids)


@message("c.dlq.purge")
@attrs.frozen
class PurgeDead(Command[CountReply]):
    """Delete dead jobs (every dead job when `ids` is None)."""

    ids: tuple[str, ...] | None = attrs.field(default=None, validator=_ids)


@message("c.queues")
@attrs.frozen
class CountQueues(Command[QueuesReply]):
    """Count jobs per queue and state."""


@message("c.qpause")
@attrs.frozen
class PauseQueue(Command[Ok]):
    """Pause (`paused=True`) or resume a queue on every node, durably: enqueue goes on,
    running jobs finish, no job of a paused queue starts. Repeating either is harmless.

    Raises:
        ValueError: `queue` is not a valid queue name.
    """

    queue: str
    paused: bool

    def __attrs_post_init__(self) -> None:
        check_job_fields(queue=self.queue)


@message("c.nodes")
@attrs.frozen
class ListNodes(Command[NodesReply]):
    """List the live nodes."""


@message("c.pause")
@attrs.frozen
class PauseWorkers(Command[Ok]):
    """Stop (`paused=True`) or resume leasing on the node that receives it; running
    jobs go on."""

    paused: bool


# -- pushes ----------------------------------------------------------------------------


@message("b.changed")
@attrs.frozen
class JobChanged:
    """A job changed (pushed to watchers, by storage to the Broker and by the Broker to
    clients)."""

    job: JobRecord


ClientRequest: TypeAlias = (
    Enqueue
    | GetJobs
    | WaitJobs
    | WatchJobs
    | UnwatchJobs
    | CancelJobs
    | ListJobs
    | ListDead
    | RetryDead
    | PurgeDead
    | CountQueues
    | ListNodes
    | PauseWorkers
    | PauseQueue  # issue 16
    # -- cron (issue 15) --
    | ListCron
    | PauseCron
    | RunCron
)

#: Every request of the client protocol, for faces that map names onto it.
_OPTIONS: Final = {
    "queue": (str,),
    "priority": (int,),
    "delay_s": (int, float),
    "max_attempts": (int,),
    "timeout_s": (int, float),
    "result_ttl_s": (int, float),
    "idempotency_key": (str,),
}
_OPTION_NAMES: Final = frozenset(_OPTIONS)


def check_spec(task: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
               options: Mapping[str, Any]) -> JobSpec:
    """Check one job locally and build its spec, as it goes on the wire.

    Raises:
        InvalidArguments: an argument is not a msgpack value.
        TypeError: `task` is not a string, or an option is unknown or of the wrong type.
        ValueError: an option is out of range (the message names it).
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a registered task name (str), got {type(task).__name__}")
    if not options.keys() <= _OPTION_NAMES:
        unknown = sorted(set(options) - _OPTION_NAMES)
        raise TypeError(f"unknown enqueue option(s): {', '.join(unknown)}")
    opts = {k: v for k, v in options.items() if v is not None}
    for name, value in opts.items():
        if isinstance(value, bool) or not isinstance(value, _OPTIONS[name]):
            raise TypeError(f"{name} must be {_OPTIONS[name][0].__name__}, got {value!r}")
    for name in ("delay_s", "timeout_s", "result_ttl_s"):
        if name in opts:
            opts[name] = float(opts[name])
    return JobSpec(task, pack_args(args, kwargs), **opts)


REQUESTS: Final[tuple[type, ...]] = (
    Enqueue, GetJobs, WaitJobs, WatchJobs, UnwatchJobs, CancelJobs, ListJobs, ListDead,
    RetryDead, PurgeDead, CountQueues, ListNodes, PauseWorkers,
    ListCron, PauseCron, RunCron,  # cron (issue 15)
    PauseQueue,  # issue 16
)
