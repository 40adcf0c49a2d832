"""The one error tree of GoTask.

Every error GoTask raises on purpose is a `GoTaskError`. Leaves also subclass the
builtin a caller would catch anyway (`JobNotFound` is a `LookupError`), so code that
does not know GoTask still handles them sensibly. Who broke a protocol is part of the
error: `LocalProtocolError` means we tried to send something invalid,
`RemoteProtocolError` means the peer did.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorNotFound",
    "AuthenticationError",
    "CallTimeout",
    "ConfigError",
    "CronEntryNotFound",
    "FramingError",
    "GoTaskError",
    "InvalidArguments",
    "InvalidMessage",
    "JobError",
    "JobNotFound",
    "LocalProtocolError",
    "NotAGoTaskNode",
    "ProtocolError",
    "RemoteActorError",
    "RemoteProtocolError",
    "Retry",
    "StaleLease",
    "StorageError",
    "StorageUnavailable",
    "SupervisorGaveUp",
    "TaskNotFound",
]


class GoTaskError(Exception):
    """Base class of every error GoTask raises on purpose."""


# -- jobs -------------------------------------------------------------------------


class JobError(GoTaskError):
    """A job could not be enqueued, found or completed as asked."""


class JobNotFound(JobError, LookupError):
    """No job has this id (or it was purged after its result TTL)."""


class TaskNotFound(JobError, LookupError):
    """No task is registered under this name; nothing is imported by path."""


class CronEntryNotFound(GoTaskError, LookupError):
    """No cron entry has this name (in storage, or in the answering node's app)."""


class InvalidArguments(JobError, TypeError):
    """Job arguments are not msgpack values, or do not fit the task."""


class StaleLease(JobError):
    """A completion, failure or heartbeat carried a lease token that is no longer current."""


# -- storage ----------------------------------------------------------------------


class StorageError(GoTaskError):
    """The storage backend refused or failed an operation."""


class StorageUnavailable(StorageError, ConnectionError):
    """The storage backend cannot be reached."""


# -- protocol ---------------------------------------------------------------------


class ProtocolError(GoTaskError):
    """A frame or message broke the wire protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (their bug or an attack)."""


class AuthenticationError(ProtocolError, PermissionError):
    """The handshake failed: wrong or missing secret, or an unsupported version."""


# -- actors -----------------------------------------------------------------------


class ActorError(GoTaskError):
    """An actor could not be reached or failed while handling a message."""


class ActorNotFound(ActorError, LookupError):
    """No actor is registered at this address, or its node is not connected."""


class CallTimeout(ActorError, TimeoutError):
    """A `call` got no reply within its timeout."""


class RemoteActorError(ActorError):
    """The actor handling a `call` raised; carries the type name and traceback text.

    Never a pickled exception: only text crosses the wire.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text


class SupervisorGaveUp(ActorError):
    """A supervised child crashed more often than its restart intensity allows."""

    def __init__(self, child: str, restarts: int, period_s: float, last_error: BaseException):
        super().__init__(
            f"actor {child!r} crashed {restarts} times within {period_s:g}s; "
            f"last error: {type(last_error).__name__}: {last_error}"
        )
        self.child = child
        self.last_error = last_error


class ConfigError(GoTaskError, ValueError):
    """A setting is missing, malformed or unsafe (e.g. a public bind without a secret)."""


# -- control flow raised by task code ----------------------------------------------


class Retry(Exception):
    """Raised by task code to ask for another attempt, optionally after a delay.

    Not a GoTaskError: it is control flow, not a failure of GoTask.

    Args:
        after_s: seconds to wait before the next attempt; None uses the task's policy.
    """

    def __init__(self, after_s: float | None = None, reason: str = "") -> None:
        super().__init__(reason or (f"retry after {after_s}s" if after_s is not None else "retry"))
        self.after_s = after_s
        self.reason = reason


# -- wire protocol ----------------------------------------------------------------


class FramingError(RemoteProtocolError):
    """The byte stream cannot be split into frames any more: a zero or oversized length
    prefix, or EOF in the middle of a frame. Fatal for the connection."""


class NotAGoTaskNode(FramingError):
    """The peer does not speak GoTask: its first bytes are no GoTask frame, or it said
    nothing to the handshake after accepting the connection (a Redis, HTTP or database
    port). A client does not retry such an address."""


class InvalidMessage(RemoteProtocolError):
    """A well-framed body is not a valid message; the frame was skipped and the
    connection stays usable.

    Attributes:
        field: dotted path of the offending field (``"Envelope.msg.Enqueue.priority"``),
            or None when the body as a whole is wrong (not msgpack, unknown tag).
        corr: correlation id of the `Envelope` that carried the invalid message, 0 unless
            known. With `reply_node` set, the receiver can answer the caller with an error.
        reply_node: node of the envelope's sender, or None when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        corr: int = 0,
        reply_node: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.corr = corr
        self.reply_node = reply_node


# -- job states and storage capacity ----------------------------------------------


class IllegalTransition(StorageError, RuntimeError):
    """Storage tried to move a job along an edge missing from `TRANSITIONS` (a bug)."""


class StorageFull(StorageError):
    """A bounded storage collection (jobs, nodes) is at its `*_max` limit."""


__all__ += ["IllegalTransition", "StorageFull"]


class JobCancelled(JobError):
    """Raised inside a job (by `check_cancelled()`) once its cancellation was requested."""


class JobTimeout(JobError, TimeoutError):
    """A job ran longer than its task's `timeout_s`."""


class ChildDied(JobError):
    """The child process running an `isolation="process"` job died (a crash, a signal,
    `os._exit`); the attempt failed and the pool starts a new child."""


__all__ += ["ChildDied", "JobCancelled", "JobTimeout"]


# -- the client library -------------------------------------------------------------


class NodeUnavailable(ActorError, ConnectionError):
    """No node in the client's list could be reached (refused, timed out, not GoTask)."""


class ConnectionLost(NodeUnavailable):
    """The connection to the node dropped while a request was in flight.

    The request may or may not have been applied: only reads, cancels and enqueues
    with an idempotency key are retried for you.
    """


class WaitTimeout(JobError, TimeoutError):
    """`wait()` gave up after its `timeout_s`; the job itself goes on."""


class JobFailed(JobError):
    """The job a client waited for ended `dead` or `cancelled`, not `succeeded`.

    Attributes:
        job: the job's final `JobRecord`.
        job_id, state: its id and terminal state ("dead" or "cancelled").
        error_type, error, traceback: the last failed attempt (None when it never ran).
    """

    def __init__(self, message: str, job: object = None) -> None:
        super().__init__(message)
        self.job = job
        self.job_id: str | None = getattr(job, "id", None)
        self.state: str | None = getattr(job, "state", None)
        self.error_type: str | None = getattr(job, "error_type", None)
        self.error: str | None = getattr(job, "error", None)
        self.traceback: str | None = getattr(job, "traceback", None)


__all__ += ["ConnectionLost", "JobFailed", "NodeUnavailable", "WaitTimeout"]


class NonRetryable(Exception):
    """Raised by task code (or subclassed) for a failure no retry can fix: the job goes
    to the dead-letter queue at once, whatever its retry policy and attempts left.

    Not a GoTaskError: like `Retry`, it is control flow raised by task code.
    """


__all__ += ["NonRetryable"]


# -- size limits (issue 21 item 8, issue 22 item 4) ----------------------------------


class ResultTooLarge(JobError, ValueError):
    """A task returned a result that encodes to more bytes than the node keeps
    (`--max-result-bytes`). The attempt fails for good: another one would return the same."""


class ReplyTooLarge(GoTaskError, ValueError):
    """The records asked for by id would not fit one reply (one wire frame): ask for
    fewer ids at once. Pages are cut instead, and continue from their cursor."""


__all__ += ["ReplyTooLarge", "ResultTooLarge"]
