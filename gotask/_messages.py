"""Messages between the actors of a node: the Broker, storage, the Dispatcher and the
WorkerSupervisor.

Rules of this module:
- Every message is an attrs frozen class registered with a tag ("b." for what the
  Broker asks storage, "d."/"w." for the Dispatcher and the WorkerSupervisor). Clients
  never send these: the client protocol is `gotask._protocol`; storage commands live in
  `gotask.actors.storage.base`.
- Pushes (`JobChanged`, defined with the client protocol and re-exported here) are plain
  sends to the address a watcher gave.
"""

from __future__ import annotations

import attrs

from gotask._job import JobRecord, LeaseToken
from gotask._protocol import JobChanged as JobChanged
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
    "JobChanged",
    "LeaseWait",
    "PauseWorkers",
    "RunJobs",
    "SlotsFreed",
    "Unpark",
    "UnwatchJobs",
    "WatchJobs",
]

#: Well-known actor names on every node.
BROKER = "broker"
STORAGE = "storage"
DISPATCHER = "dispatcher"
WORKERS = "workers"
SCHEDULER = "scheduler"
REAPER = "reaper"


@message("b.watch")
@attrs.frozen
class WatchJobs:
    """Broker -> storage: push `JobChanged` to `watcher` on every change of these jobs.

    Answered with storage's `GetJobsReply` holding the jobs' current records, so a change
    that happened before the watch began is never missed.
    """

    ids: tuple[str, ...]
    watcher: Address


@message("b.unwatch")
@attrs.frozen
class UnwatchJobs:
    """Broker -> storage: stop pushing changes of these jobs to `watcher`."""

    ids: tuple[str, ...]
    watcher: Address


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


@message("d.pause")
@attrs.frozen
class PauseWorkers:
    """Broker -> Dispatcher: stop (`paused=True`) or resume leasing on this node.

    Running jobs are not interrupted. Answered with `Ok`.
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
