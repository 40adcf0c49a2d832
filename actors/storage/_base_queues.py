"""The storage contract's queue block (issue 16): paused queues, cluster-wide.

Rules of this module: those of `base` (the contract), which re-exports every name here,
and these:
- Storage keeps a set of paused queue names, durably where the backend is durable. A
  queue may be paused before it has any job (and stays paused when it has none left).
- A paused queue's jobs are never leased: a lease skips it as if it had no ready job,
  whatever its weight. Enqueue, promotion, cancellation, heartbeats, acks and every
  other command work as usual, so running jobs finish and new ones wait, queued.
- Resuming a queue makes its ready jobs leasable at once: a store with events reports
  the queue as ready, so parked leases of every node lease again.
- `QueueInfo` reads the paused set with the storage time of the read, and per queue
  with queued jobs the earliest due time among them (`ready_since`: when its oldest
  ready job became due; an immediate job is due when enqueued, a released one keeps its
  time). Backends answer it from an ordered index, never a scan of the queue's jobs.
"""

from __future__ import annotations

import attrs

from gotask._job import check_job_fields
from gotask.runtime.message import Command, message

__all__ = [
    "QueueInfo",
    "QueueInfoReply",
    "QueueReadySince",
    "SetQueuePaused",
    "SetQueuePausedReply",
]


@message("s.qpause.rep")
@attrs.frozen
class SetQueuePausedReply:
    """Every paused queue after the command, sorted."""

    paused: tuple[str, ...]


@message("s.qpause")
@attrs.frozen
class SetQueuePaused(Command[SetQueuePausedReply]):
    """Pause or resume `queue` (see the module's rules); a bad name is a ValueError."""

    queue: str
    paused: bool

    def __attrs_post_init__(self) -> None:
        check_job_fields(queue=self.queue)


@message("s.qready")
@attrs.frozen
class QueueReadySince:
    """The earliest due time (storage clock, seconds) of a queue's queued jobs."""

    queue: str
    since: float


@message("s.qinfo.rep")
@attrs.frozen
class QueueInfoReply:
    """The paused queues (sorted), the storage time `now` of the read (seconds), and per
    queue with queued jobs, sorted by queue, when its oldest ready job became due."""

    now: float
    paused: tuple[str, ...]
    ready_since: tuple[QueueReadySince, ...] = ()


@message("s.qinfo")
@attrs.frozen
class QueueInfo(Command[QueueInfoReply]):
    """Read what storage knows of queues beside their counts."""
