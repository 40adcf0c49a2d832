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
    "CallTimeout",
    "ConfigError",
    "GoTaskError",
    "JobError",
    "JobNotFound",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteActorError",
    "RemoteProtocolError",
    "Retry",
    "StaleLease",
    "StorageError",
    "StorageUnavailable",
    "SupervisorGaveUp",
    "AuthenticationError",
    "TaskNotFound",
    "InvalidArguments",
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
