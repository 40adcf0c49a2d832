"""Messages between clients, the Broker, the Dispatcher and the WorkerSupervisor.

Rules of this module:
- Every message is an attrs frozen class registered with a tag (prefix "b." for the
  client-facing protocol, "d."/"w." for actors inside a node). Storage commands live in
  `gotask.actors.storage.base`; a client may also send the read-only and DLQ storage
  commands listed in `CLIENT_STORAGE_COMMANDS` to the Broker, which forwards them.
- Client requests are answered through `call`: a failure comes back as `ErrorReply`
  whose `type_name` is a class of `gotask._errors` (the client re-raises that class).
- Pushes to a client (`JobChanged`) are plain sends to the address the client gave.
"""

from __future__ import annotations

import attrs

from gotask._job import JobRecord, LeaseToken
from gotask.runtime.message import Address, Message, message

__all__ = [
    "BROKER",
    "DISPATCHER",
    "REAPER",
    "SCHEDULER",
    "STORAGE",
    "WORKERS",
    "CancelRunning",
    "Drain",
    "Enqueue",
    "EnqueueItem",
    "JobChanged",
    "LeaseWait",
    "PauseWorkers",
    "RunJobs",
    "SlotsFreed",
    "Unpark",
    "UnwatchJobs",
    "WaitJobs",
    "WatchJobs",
]

#: Well-known actor names on every node.
BROKER = "broker"
STORAGE = "storage"
DISPATCHER = "dispatcher"
WORKERS = "workers"
SCHEDULER = "scheduler"
REAPER = "reaper"


@message("b.item")
@attrs.frozen
class EnqueueItem:
    """One job a client asks for. None fields take the task's defaults.

    `args` is `pack_args(args, kwargs)`: msgpack `[args_list, kwargs_map]`.
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


@message("b.enqueue")
@attrs.frozen
class Enqueue:
    """Enqueue jobs; answered by storage's `EnqueueReply` (ids in order, created flags).

    The whole batch is refused (nothing enqueued) if any item is invalid; the error
    names the item's index.
    """

    items: tuple[EnqueueItem, ...]


@message("b.wait")
@attrs.frozen
class WaitJobs:
    """Answer with `GetJobsReply` once every job is terminal, or after `timeout_s`."""

    ids: tuple[str, ...]
    timeout_s: float


@message("b.watch")
@attrs.frozen
class WatchJobs:
    """Push `JobChanged` to `watcher` on every change of these jobs (state, progress).

    Answered with `GetJobsReply` holding the jobs' current records, so a change that
    happened before the watch began is never missed.
    """

    ids: tuple[str, ...]
    watcher: Address


@message("b.unwatch")
@attrs.frozen
class UnwatchJobs:
    """Stop pushing changes of these jobs to `watcher`."""

    ids: tuple[str, ...]
    watcher: Address


@message("b.changed")
@attrs.frozen
class JobChanged:
    """A job changed (pushed to watchers)."""

    job: JobRecord


# -- inside a node ----------------------------------------------------------------


@message("d.leasewait")
@attrs.frozen
class LeaseWait:
    """A storage `LeaseJobs` that waits up to `wait_s` for jobs instead of coming back
    empty: the Dispatcher's wake-up, so idle nodes never busy-poll."""

    lease: Message  # a storage LeaseJobs
    wait_s: float


@message("w.run")
@attrs.frozen
class RunJobs:
    """Dispatcher -> WorkerSupervisor: leased jobs to run."""

    jobs: tuple[JobRecord, ...]


@message("d.freed")
@attrs.frozen
class SlotsFreed:
    """WorkerSupervisor -> Dispatcher: this many worker slots became free."""

    count: int


@message("b.pause")
@attrs.frozen
class PauseWorkers:
    """Stop (`paused=True`) or resume leasing on the node that receives it.

    Running jobs are not interrupted. Answered with None.
    """

    paused: bool


@message("w.drain")
@attrs.frozen
class Drain:
    """Graceful shutdown: stop leasing, let running jobs finish within `grace_s`, then
    cancel the rest and give every unfinished lease back (answered when done)."""

    grace_s: float


@message("d.unpark")
@attrs.frozen
class Unpark:
    """Answer every parked `LeaseWait` of `node` at once (empty): a pause takes effect
    without waiting for the parked lease to time out."""

    node: str


@message("w.cancel")
@attrs.frozen
class CancelRunning:
    """Storage -> the WorkerSupervisor holding these leases: cancellation was requested.

    A fast path only: the heartbeat answer carries the same news if this is lost.
    """

    tokens: tuple[LeaseToken, ...]
