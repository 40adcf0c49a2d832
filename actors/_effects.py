"""The values pure actor cores exchange with their shells: time, call results, effects.

Rules of this module:
- A core's `handle(msg, now, request)` returns a list of effects; it never awaits,
  reads no clock and draws no random number. Its shell carries the effects out in order.
- `Send` and `Respond` (from the runtime) deliver messages. `Call(dst, msg, tag)` asks
  the shell to make a request in the background: the answer comes back into the same
  core as `Called(tag, reply)`, or `CallFailed(tag, ...)`, through the actor's inbox.
- `Tick(now)` is how time reaches a core: the shell feeds one whenever the core's
  `deadline()` has passed. `Log` asks the shell to log; `Stop` ends the actor.
- `JobsEnqueued` and `LeasesExpired` (from `gotask._job_metrics`) are metric events: the
  shell adds them to the node's `JobMetrics`, if it has one.
- `StartJobs` and `CancelJob` are for a shell that runs jobs (the WorkerSupervisor's):
  the core decides, the shell's `JobRunner` wakes workers or cancels a scope.
- These values never cross a node (none is registered for the wire) and this module
  imports no trio.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from gotask._job_metrics import JobsEnqueued, LeasesExpired
from gotask.runtime.actor import Respond, Send
from gotask.runtime.message import Address, Envelope, ErrorReply

__all__ = [
    "CALL_TIMEOUT_S",
    "Call",
    "CallFailed",
    "Called",
    "CancelJob",
    "Effect",
    "JobEvent",
    "Log",
    "MetricEvent",
    "StartJobs",
    "Stop",
    "Tick",
    "unknown_message",
]

CALL_TIMEOUT_S = 10.0


@attrs.frozen
class Tick:
    """Time for the core: the shell's clock read `now` (seconds, monotonic)."""

    now: float


@attrs.frozen
class Call:
    """Effect: request `msg` from `dst`; the answer comes back tagged with `tag`."""

    dst: Address
    msg: Any
    tag: Any
    timeout_s: float = CALL_TIMEOUT_S


@attrs.frozen
class Called:
    """The answer to the `Call` tagged `tag`.

    `origin` is the shell that made the call: after a restart a shell drops answers to
    calls of the actor's earlier life, which may still wait in the inbox.
    """

    tag: Any
    reply: Any
    origin: object = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class CallFailed:
    """The `Call` tagged `tag` failed.

    `remote` is true when the far actor answered with an error (`error_type` names it),
    false when no answer came (timeout, lost connection). `jitter` is a factor in
    [0.5, 1.5) drawn by the shell from the World, for the core's retry backoff.
    """

    tag: Any
    error_type: str
    error: str
    remote: bool
    jitter: float = 1.0
    origin: object = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Log:
    """Effect: log `text` at `level` (a `logging` level) on the actor's logger."""

    level: int
    text: str


@attrs.frozen
class JobEvent:
    """Effect: log one job event (see `actors._job_log`); task and queue when known."""

    event: str
    job_id: str
    attempt: int | None = None
    task: str | None = None
    queue: str | None = None
    detail: str = ""


@attrs.frozen
class Stop:
    """Effect: the actor is done; its shell returns after the effects before this."""


@attrs.frozen
class StartJobs:
    """Effect: `count` more jobs are ready to start; wake idle workers for them."""

    count: int


@attrs.frozen
class CancelJob:
    """Effect: cancel the running attempt `attempt` of job `job_id`, if it runs."""

    job_id: str
    attempt: int


#: A metric event for the node's `JobMetrics`.
MetricEvent = JobsEnqueued | LeasesExpired
Effect = Send | Respond | Call | Log | JobEvent | MetricEvent | Stop | StartJobs | CancelJob


def unknown_message(actor: str, msg: object, request: Envelope | None) -> list[Effect]:
    """The effects answering a message `actor` does not handle: an error reply to a
    request (so its caller never waits for a timeout), a warning for a plain send."""
    text = f"the {actor} does not handle {type(msg).__name__} messages"
    if request is not None and request.corr:
        return [Respond(request, ErrorReply("InvalidMessage", text, ""))]
    return [Log(logging.WARNING, text)]
