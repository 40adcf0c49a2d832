"""What the client checks and decodes: job items, replies, results, remote errors.

Rules of this module:
- No IO. Functions are pure; `Watch` (one live watch's mailbox) holds an anyio Event.
- Arguments and options are checked as the node would check them, so a bad value never
  leaves the client: `pack_args` refuses what is not msgpack (`InvalidArguments`), and
  option ranges are those of storage's `NewJob`.
- A failure the node reports is raised as the `gotask._errors` class it names (looked up
  in that module only, `GoTaskError` subclasses only), otherwise as `RemoteActorError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import anyio
import attrs
import msgpack

from gotask import _errors
from gotask._app import pack_args
from gotask._errors import (
    GoTaskError,
    JobFailed,
    JobNotFound,
    RemoteActorError,
    RemoteProtocolError,
)
from gotask._job import NAME_CHARS_MAX, JobRecord, JobState, NewJob
from gotask._messages import EnqueueItem
from gotask.actors.storage.base import BATCH_MAX, GetJobsReply
from gotask.runtime.message import ErrorReply

__all__ = [
    "ENQUEUE_BYTES_MAX",
    "WAIT_SLICE_S",
    "WATCH_REFRESH_S",
    "JobSpec",
    "Watch",
    "check_item",
    "chunks",
    "decode_result",
    "expect",
    "only_job",
    "remote_error",
]

T = TypeVar("T")
#: One job for `enqueue_many`: (task, args, kwargs, options); kwargs/options may be None.
JobSpec = tuple[str, Sequence[Any], Mapping[str, Any] | None, Mapping[str, Any] | None]

#: Longest single `WaitJobs` the client asks for, in seconds; `wait` loops on it.
WAIT_SLICE_S: Final = 30.0
#: A watch with no push for this long asks the node again (a push may have been lost).
WATCH_REFRESH_S: Final = 30.0
#: Bytes of encoded arguments per `Enqueue` message, below the 1 MiB frame limit.
ENQUEUE_BYTES_MAX: Final = 768 << 10
_ITEM_OVERHEAD_BYTES: Final = 512
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


def check_item(task: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
          options: Mapping[str, Any]) -> EnqueueItem:
    """Check one job locally and build its wire item.

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
    if "delay_s" in opts:
        opts["delay_s"] = float(opts["delay_s"])
        if not opts["delay_s"]:
            del opts["delay_s"]
    item = EnqueueItem(task, pack_args(args, kwargs), **opts)
    if opts or not 0 < len(task) <= NAME_CHARS_MAX:  # the defaults are in range
        _check_ranges(item)
    return item


def _check_ranges(item: EnqueueItem) -> None:
    """Raise ValueError as storage would, so a bad value never leaves the client."""
    NewJob(
        id="x", task=item.task, queue="default" if item.queue is None else item.queue,
        args=b"", priority=item.priority or 0, delay_s=item.delay_s,
        max_attempts=3 if item.max_attempts is None else item.max_attempts,
        timeout_s=item.timeout_s, idempotency_key=item.idempotency_key,
        result_ttl_s=0.0 if item.result_ttl_s is None else item.result_ttl_s,
    )


def chunks(items: Sequence[EnqueueItem]) -> Iterator[tuple[EnqueueItem, ...]]:
    """Split items into messages that fit one frame and one storage batch."""
    chunk: list[EnqueueItem] = []
    size = 0
    for item in items:
        cost = len(item.args) + len(item.task) + _ITEM_OVERHEAD_BYTES
        if chunk and (size + cost > ENQUEUE_BYTES_MAX or len(chunk) >= BATCH_MAX):
            yield tuple(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield tuple(chunk)


def expect(reply: object, cls: type[T]) -> T:
    """Return `reply` if it is a `cls`; raise `RemoteProtocolError` otherwise."""
    if not isinstance(reply, cls):
        got = type(reply).__name__
        raise RemoteProtocolError(f"expected {cls.__name__} from the node, got {got}")
    return reply


def only_job(reply: object, job_id: str) -> JobRecord:
    """The one job of a `GetJobsReply`.

    Raises:
        JobNotFound: the node has no such job. RemoteProtocolError: not one job.
    """
    jobs = expect(reply, GetJobsReply).jobs
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
