"""What the client checks and decodes: job items, replies, results, remote errors.

Rules of this module:
- No IO. Functions are pure; `Watch` (one live watch's mailbox) holds an anyio Event;
  `gather_pages` awaits only the request function it is given.
- Arguments and options are checked here, once, so a bad value never leaves the client:
  `pack_args` refuses what is not msgpack (`InvalidArguments`), option types are checked
  here and their ranges by `JobSpec` itself (the node checks the same when it decodes it).
- A failure the node reports is raised as the `gotask._errors` class it names (looked up
  in that module only, `GoTaskError` subclasses only), otherwise as `RemoteActorError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import anyio
import attrs
import msgpack

from gotask import _errors
from gotask._errors import (
    ConfigError,
    GoTaskError,
    InvalidArguments,
    JobFailed,
    JobNotFound,
    RemoteActorError,
    RemoteProtocolError,
)
from gotask._job import ARGS_BYTES_MAX, JobRecord, JobState
from gotask._protocol import (
    IDS_MAX,
    JobPage,
    JobSpec,
    JobsReply,
    ListDead,
    ListJobs,
    check_spec,
)
from gotask.runtime.message import Command, ErrorReply, reply_type

__all__ = [
    "ENQUEUE_BYTES_MAX",
    "WAIT_SLICE_S",
    "WATCH_REFRESH_S",
    "JobTuple",
    "Watch",
    "check_args_bytes",
    "check_jobs",
    "check_limits",
    "checked_reply",
    "chunks",
    "decode_result",
    "dlq_ids",
    "gather_pages",
    "only_job",
    "remote_error",
]

R = TypeVar("R")

#: One job for `enqueue_many`: (task, args, kwargs, options); kwargs/options may be None.
JobTuple = tuple[str, Sequence[Any], Mapping[str, Any] | None, Mapping[str, Any] | None]

#: Longest single `WaitJobs` the client asks for, in seconds; `wait` loops on it.
WAIT_SLICE_S: Final = 30.0
#: A watch with no push for this long asks the node again (a push may have been lost).
WATCH_REFRESH_S: Final = 30.0
#: Bytes of encoded arguments per `Enqueue` message, below the 1 MiB frame limit.
ENQUEUE_BYTES_MAX: Final = 768 << 10
_ITEM_OVERHEAD_BYTES: Final = 512


def decode_result(job: JobRecord) -> Any:
    """Return what a succeeded job returned (decoded from msgpack).

    Raises:
        JobFailed: the job is dead or cancelled (the error says which, and why).
        ValueError: the job has not finished yet.
    """
    if job.state == JobState.SUCCEEDED:
        return None if job.result is None else msgpack.unpackb(job.result, strict_map_key=False)
    if job.state == JobState.DEAD:
        why = f"{job.error_type}: {job.error}" if job.error_type else "no error recorded"
        text = f"job {job.id} ({job.task}) is dead after {job.attempts_counted} attempt(s): {why}"
        raise JobFailed(text, job)
    if job.state == JobState.CANCELLED:
        raise JobFailed(f"job {job.id} ({job.task}) was cancelled", job)
    raise ValueError(f"job {job.id} has not finished: it is {job.state}")


def remote_error(reply: ErrorReply) -> Exception:
    """The exception a node's `ErrorReply` stands for (a `GoTaskError` or `RemoteActorError`)."""
    name, text = reply.type_name, reply.message
    if name == "RemoteActorError":  # the broker relays a storage failure as "Type: message"
        inner, sep, rest = text.partition(": ")
        if sep and inner.isidentifier():
            name, text = inner, rest
    cls = getattr(_errors, name, None) if name in _errors.__all__ else None
    if isinstance(cls, type) and issubclass(cls, GoTaskError) and cls is not RemoteActorError:
        try:
            error: Exception = cls(text)
            return error
        except TypeError:  # a class that needs more than a message
            pass
    return RemoteActorError(reply.type_name, reply.message, reply.traceback)


def check_jobs(jobs: Iterable[JobTuple]) -> list[JobSpec]:
    """Every job of an `enqueue_many`, checked before any is sent.

    Raises:
        TypeError: an entry is not a 4-tuple. Otherwise as `check_spec`.
    """
    items = []
    for spec in jobs:
        if not isinstance(spec, tuple) or len(spec) != 4:
            raise TypeError(f"each job must be (task, args, kwargs, options), got {spec!r}")
        task, args, kwargs, options = spec
        items.append(check_spec(task, args, kwargs, options or {}))
    return items


def chunks(specs: Sequence[JobSpec], jobs_max: int = IDS_MAX) -> Iterator[tuple[JobSpec, ...]]:
    """Split specs into messages that fit one frame and of at most `jobs_max` jobs."""
    chunk: list[JobSpec] = []
    size = 0
    for spec in specs:
        cost = len(spec.args) + len(spec.task) + _ITEM_OVERHEAD_BYTES
        if chunk and (size + cost > ENQUEUE_BYTES_MAX or len(chunk) >= jobs_max):
            yield tuple(chunk)
            chunk, size = [], 0
        chunk.append(spec)
        size += cost
    if chunk:
        yield tuple(chunk)


def only_job(reply: JobsReply, job_id: str) -> JobRecord:
    """The one job of a `JobsReply`.

    Raises:
        JobNotFound: the node has no such job. RemoteProtocolError: not one job.
    """
    jobs = reply.jobs
    if len(jobs) != 1:
        raise RemoteProtocolError(f"expected 1 job in the reply, got {len(jobs)}")
    if jobs[0] is None:
        raise JobNotFound(f"no job {job_id!r} (never enqueued, or purged after its TTL)")
    return jobs[0]


@attrs.define(eq=False)
class Watch:
    """One `watch()` in progress: the newest record pushed, and who waits for it."""

    job_id: str
    changed: anyio.Event = attrs.Factory(anyio.Event)
    latest: JobRecord | None = None
    pushes: int = 0
    lost: bool = False

    def offer(self, job: JobRecord) -> None:
        """Keep `job` as the newest record and wake the watcher (a terminal one stays)."""
        if self.latest is not None and self.latest.is_terminal:
            return  # a terminal record is final; an older push must not replace it
        self.latest = job
        self.pushes += 1
        self.changed.set()

    def link_lost(self) -> None:
        """The connection carrying the pushes closed: the watcher must watch again."""
        self.lost = True
        self.changed.set()

    async def next_change(self, timeout_s: float) -> bool:
        """Wait for a push or a lost link; False after `timeout_s` seconds of silence."""
        with anyio.move_on_after(timeout_s):
            await self.changed.wait()
        if not self.changed.is_set():
            return False
        self.changed = anyio.Event()
        return True


def checked_reply(msg: Command[R], reply: object) -> R:
    """`reply`, if it is what `msg` expects.

    Raises:
        RemoteProtocolError: the node answered with another message.
    """
    expected = reply_type(type(msg))
    if expected is not None and not isinstance(reply, expected):
        raise RemoteProtocolError(f"the node answered {type(msg).__name__} with "
                                  f"{type(reply).__name__}")
    return reply  # type: ignore[return-value]  # checked against Command[R] just above


def dlq_ids(ids: Sequence[str] | None, all_jobs: bool) -> tuple[str, ...] | None:
    """The ids a DLQ retry or purge names (None: every dead job)."""
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of job ids, not one string")
    if (ids is None) == (not all_jobs):
        raise ValueError("pass either ids or all_jobs=True")
    return None if ids is None else tuple(ids)


def check_limits(max_args_bytes: int, max_batch_jobs: int) -> int:
    """`max_args_bytes`, once both client limits are checked to be in range.

    Raises:
        ConfigError: a limit out of range (they may be lowered, never raised).
    """
    if not (1 <= max_args_bytes <= ARGS_BYTES_MAX and 1 <= max_batch_jobs <= IDS_MAX):
        raise ConfigError(f"max_args_bytes must be 1-{ARGS_BYTES_MAX} and max_batch_jobs "
                          f"1-{IDS_MAX}, got {max_args_bytes} and {max_batch_jobs}")
    return max_args_bytes


def check_args_bytes(specs: Sequence[JobSpec], max_args_bytes: int) -> None:
    """Refuse, before sending, arguments the nodes would refuse.

    Raises:
        InvalidArguments: a job's encoded arguments are over `max_args_bytes`.
    """
    for spec in specs:
        if len(spec.args) > max_args_bytes:
            raise InvalidArguments(f"arguments encode to {len(spec.args)} bytes; the limit "
                                   f"is {max_args_bytes} (max_args_bytes)")


async def gather_pages(request: Callable[[Any], Awaitable[JobPage]],
                       msg: ListJobs | ListDead) -> list[JobRecord]:
    """Up to `msg.limit` records of a listing: a node cuts a page to fit one frame, so
    pages are asked for until the limit or the end."""
    jobs: list[JobRecord] = []
    want = msg.limit
    while True:
        page = await request(msg)
        jobs += page.jobs
        if page.cursor is None or not page.jobs or len(jobs) >= want:
            return jobs
        msg = attrs.evolve(msg, limit=want - len(jobs), cursor=page.cursor)
