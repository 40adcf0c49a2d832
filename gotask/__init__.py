"""GoTask: a distributed task queue for Python, built as an actor runtime on trio.

Define tasks on an `App`, start `gotask node` processes, and enqueue jobs with a
`Client` (sync) or `AsyncClient` (trio or asyncio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gotask._lazy import lazy_exports

if TYPE_CHECKING:
    from gotask._app import App as App
    from gotask._app import JobContext as JobContext
    from gotask._app import ProcessLimits as ProcessLimits
    from gotask._app import Task as Task
    from gotask._app import current_job as current_job
    from gotask._client_async import AsyncClient as AsyncClient
    from gotask._client_sync import Client as Client
    from gotask._errors import ChildDied as ChildDied
    from gotask._errors import ConfigError as ConfigError
    from gotask._errors import ConnectionLost as ConnectionLost
    from gotask._errors import GoTaskError as GoTaskError
    from gotask._errors import InvalidArguments as InvalidArguments
    from gotask._errors import JobCancelled as JobCancelled
    from gotask._errors import JobError as JobError
    from gotask._errors import JobFailed as JobFailed
    from gotask._errors import JobNotFound as JobNotFound
    from gotask._errors import JobTimeout as JobTimeout
    from gotask._errors import NodeUnavailable as NodeUnavailable
    from gotask._errors import NonRetryable as NonRetryable
    from gotask._errors import ReplyTooLarge as ReplyTooLarge
    from gotask._errors import ResultTooLarge as ResultTooLarge
    from gotask._errors import Retry as Retry
    from gotask._errors import StorageError as StorageError
    from gotask._errors import TaskNotFound as TaskNotFound
    from gotask._errors import WaitTimeout as WaitTimeout
    from gotask._job import AttemptRecord as AttemptRecord
    from gotask._job import JobRecord as JobRecord
    from gotask._job import JobState as JobState
    from gotask._retry import RetryPolicy as RetryPolicy
    from gotask._retry import RetryRule as RetryRule

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "AttemptRecord",
    "ChildDied",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "GoTaskError",
    "InvalidArguments",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobTimeout",
    "NodeUnavailable",
    "NonRetryable",
    "ProcessLimits",
    "ReplyTooLarge",
    "ResultTooLarge",
    "Retry",
    "RetryPolicy",
    "RetryRule",
    "StorageError",
    "Task",
    "TaskNotFound",
    "WaitTimeout",
    "current_job",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "gotask._app": ("App", "JobContext", "ProcessLimits", "Task", "current_job"),
        "gotask._client_async": ("AsyncClient",),
        "gotask._client_sync": ("Client",),
        "gotask._errors": (
            "ChildDied", "ConfigError", "ConnectionLost", "GoTaskError", "InvalidArguments",
            "JobCancelled",
            "JobError", "JobFailed", "JobNotFound", "JobTimeout", "NodeUnavailable",
            "NonRetryable", "ReplyTooLarge", "ResultTooLarge", "Retry", "StorageError",
            "TaskNotFound", "WaitTimeout",
        ),
        "gotask._job": ("AttemptRecord", "JobRecord", "JobState"),
        "gotask._retry": ("RetryPolicy", "RetryRule"),
    },
)
