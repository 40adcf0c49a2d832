"""RFC 9457 problem documents, named like the exceptions the Python client raises.

Rules of this module:
- Pure: an exception in, `(status, document)` out.
- `type` is `urn:gotask:error:<Name>` and `title` is `<Name>`, the class of
  `gotask._errors` the client would raise (or `ValueError`/`TypeError` for a refused
  field); `detail` is the one-line message. Tracebacks are never sent.
"""

from __future__ import annotations

from typing import Any, Final

from gotask import _errors
from gotask._client_jobs import remote_error
from gotask.runtime.message import ErrorReply

__all__ = ["PROBLEM_TYPE", "problem", "problem_for"]

PROBLEM_TYPE: Final = "application/problem+json"

_STATUS: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (_errors.AuthenticationError, 401),
    (_errors.JobNotFound, 404),
    (_errors.TaskNotFound, 422),
    (_errors.InvalidArguments, 422),
    (_errors.IllegalTransition, 409),
    (_errors.StorageFull, 503),
    (_errors.StorageUnavailable, 503),
    (_errors.NodeUnavailable, 503),
    (_errors.CallTimeout, 504),
    (ValueError, 400),
    (TypeError, 400),
    (LookupError, 404),
)


def problem(status: int, name: str, detail: str) -> dict[str, Any]:
    """A problem document."""
    return {"type": f"urn:gotask:error:{name}", "title": name, "status": status,
            "detail": detail}


def problem_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and problem document for an exception a route met."""
    if isinstance(exc, _errors.RemoteActorError):
        exc = remote_error(ErrorReply(exc.type_name, exc.message, ""))
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    name = exc.type_name if isinstance(exc, _errors.RemoteActorError) else type(exc).__name__
    detail = exc.message if isinstance(exc, _errors.RemoteActorError) else str(exc)
    return status, problem(status, name, detail.splitlines()[0] if detail else name)
