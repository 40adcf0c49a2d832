"""Tasks and the App that registers them.

Rules of this module:
- A job names its task by registered name only. Nothing is imported by a path that a
  job or a client supplies; the operator chooses the app module when starting a node.
- Arguments are msgpack values (nil, bool, int, float, str, bytes, lists, string-keyed
  maps). `pack_args` refuses anything else with `InvalidArguments`, before enqueue.
- Task functions are sync (run in a thread, or a child process with
  `isolation="process"`) or `async def` (run in trio, or in the node's asyncio loop with
  `loop="asyncio"`). Inside any, `current_job()` gives the job's id, attempt, progress
  reporting and cancellation.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

import attrs
import msgpack

from gotask._cron import CronEntry, make_entry
from gotask._errors import InvalidArguments, TaskNotFound
from gotask._job import ARGS_BYTES_MAX, check_job_fields
from gotask._retry import RetryPolicy, RetryRule

__all__ = ["App", "JobContext", "ProcessLimits", "Task", "current_job", "pack_args",
           "unpack_args"]

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
DEFAULT_RETRY = RetryPolicy()
#: What a cron entry's `options` may set on its jobs.
_CRON_JOB_OPTIONS = {"max_attempts", "timeout_s", "result_ttl_s"}
#: Event loops an `async def` task may run on.
LOOPS = ("trio", "asyncio")
#: Where a sync task may run: a thread of the node, or a child process.
ISOLATIONS = ("thread", "process")


@attrs.frozen
class Task:
    """A registered task and its defaults (each may be overridden per enqueue)."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    retry: RetryPolicy | None = DEFAULT_RETRY
    retry_rules: tuple[RetryRule, ...] = ()
    timeout_s: float | None = None
    result_ttl_s: float = 86_400.0
    #: The event loop of an `async def` task: "trio" or "asyncio".
    loop: str = "trio"
    #: Where a sync task runs: "thread" or "process".
    isolation: str = "thread"
    signature: inspect.Signature = attrs.field(
        init=False, eq=False, repr=False,
        default=attrs.Factory(lambda task: inspect.signature(task.fn), takes_self=True))
    #: (fewest, most) positional arguments when every parameter is plain positional
    #: or keyword: a call with only positional arguments is checked by counting them.
    positional: tuple[int, int] | None = attrs.field(
        init=False, eq=False, repr=False,
        default=attrs.Factory(lambda task: _positional_range(task.signature), takes_self=True))

    def bind_check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Check that the arguments fit the function's signature.

        Raises:
            InvalidArguments: they do not (the message says why).
        """
        span = self.positional
        if span is not None and not kwargs and span[0] <= len(args) <= span[1]:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"task {self.name!r}: {exc}") from None


@attrs.frozen
class ProcessLimits:
    """The child processes of a node's `isolation="process"` tasks.

    Args:
        children: children running jobs at once (one job each).
        max_jobs_per_child: jobs after which a child is replaced (None: no limit).
        max_rss_mb_per_child: resident memory in MiB past which a child is replaced
            after its job (None: no limit).
        kill_grace_s: seconds between SIGTERM and SIGKILL when a child is stopped, and
            that a cancelled job's child has to answer before it is stopped.
    """

    children: int = 2
    max_jobs_per_child: int | None = None
    max_rss_mb_per_child: float | None = None
    kill_grace_s: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.children <= 1000:
            raise ValueError(f"children must be 1-1000, got {self.children}")
        if self.max_jobs_per_child is not None and self.max_jobs_per_child < 1:
            raise ValueError(f"max_jobs_per_child must be >= 1, got {self.max_jobs_per_child}")
        if self.max_rss_mb_per_child is not None and self.max_rss_mb_per_child <= 0:
            raise ValueError("max_rss_mb_per_child must be > 0, "
                             f"got {self.max_rss_mb_per_child}")
        if not 0 <= self.kill_grace_s <= 3600:
            raise ValueError(f"kill_grace_s must be 0-3600, got {self.kill_grace_s}")


def _positional_range(signature: inspect.Signature) -> tuple[int, int] | None:
    params = signature.parameters.values()
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return sum(p.default is inspect.Parameter.empty for p in params), len(params)


class App:
    """A registry of tasks: what a node may run.

    Example:
        app = gotask.App("shop")

        @app.task(queue="emails", max_attempts=5)
        def send_receipt(order_id: int) -> None: ...
    """

    def __init__(self, name: str = "gotask", *, loop: str = "trio") -> None:
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        self.name = name
        #: The loop of `async def` tasks that do not name one.
        self.loop = loop
        self._tasks: dict[str, Task] = {}
        self._crons: dict[str, CronEntry] = {}

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[F], F]: ...

    def task(self, fn: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
        """Register a function as a task, with or without options.

        The task's name is `name=` when given, else the function's `__name__`
        (`send_receipt`), as Dramatiq names actors; two tasks with one name are refused.

        Options: name, queue, priority, max_attempts, retry (a RetryPolicy or None for
        no retry), retry_rules (tuple of RetryRule), timeout_s, result_ttl_s, loop
        ("trio" or "asyncio", for `async def` tasks; default: the App's `loop`),
        isolation ("thread" or "process", for sync tasks; see docs/tasks.md).

        Raises:
            ValueError: a bad option value or a name registered twice.
            TypeError: an unknown option.
        """

        def register(func: F) -> F:
            self._register(func, options)
            return func

        return register(fn) if fn is not None else register

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task:
        name = options.pop("name", None) or fn.__name__
        if not _NAME.match(name):
            raise ValueError(f"invalid task name {name!r}")
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already registered")
        allowed = {f.name for f in attrs.fields(Task)} - {"name", "fn", "is_async"}
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        _check_options(options)
        is_async = inspect.iscoroutinefunction(fn)
        _check_runner(name, fn, is_async, options)
        if is_async:
            options.setdefault("loop", self.loop)
        task = Task(name=name, fn=fn, is_async=is_async, **options)
        self._tasks[name] = task
        return task

    def get(self, name: str) -> Task:
        """Return the task registered under `name`.

        Raises:
            TaskNotFound: no such task.
        """
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFound(self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        """The message for an unknown task: the closest registered names, or all of few."""
        close = difflib.get_close_matches(name, self._tasks, n=3, cutoff=0.5)
        if close:
            hint = "did you mean " + " or ".join(repr(n) for n in close) + "?"
        elif self._tasks:
            hint = "registered: " + ", ".join(sorted(self._tasks)[:10])
        else:
            hint = "no tasks are registered"
        return f"unknown task {name!r} in app {self.name!r}: {hint}"

    def names(self) -> list[str]:
        """Registered task names, sorted."""
        return sorted(self._tasks)

    # -- cron entries (issue 15) ---------------------------------------------------------

    def cron(
        self, schedule: str | None = None, /, **options: Any
    ) -> Callable[[F], F]:
        """Declare a recurring job of the decorated function (registered as a task
        with default options, named `name` if given, unless it is one already). The
        entry is named after the task unless `name=` is given. Options are those of
        `add_cron`.

        Example:
            @app.cron("0 7 * * mon-fri", zone="Europe/Paris")
            def morning_report() -> None: ...

        Raises:
            ValueError: an invalid entry (the message names it).
        """

        def register(func: F) -> F:
            name = options.pop("name", None)
            task = next((t for t in self._tasks.values() if t.fn is func), None)
            if task is None:
                task = self._register(func, {"name": name} if name else {})
            self.add_cron(name or task.name, task.name, schedule, **options)
            return func

        return register

    def add_cron(
        self, name: str, task: str, schedule: str | None = None, /, **options: Any
    ) -> CronEntry:
        """Declare a recurring job of the registered task `task`: a cron expression
        (`schedule`, evaluated by cronsim in `zone`) or `every_s=` seconds.

        Options: every_s, zone (IANA name, default "UTC"), args, kwargs, queue, priority,
        options (max_attempts, timeout_s, result_ttl_s), misfire ("skip", "once" (the
        default) or "all"), misfire_limit, grace_s, jitter_s. See docs/cron.md.

        Raises:
            ValueError: an invalid entry, an unknown task or a name declared twice.
            TypeError: an unknown option.
        """
        if name in self._crons:
            raise ValueError(f"cron entry {name!r} is already declared")
        if task not in self._tasks:
            raise ValueError(f"cron entry {name!r}: unknown task {task!r} (register it first)")
        try:
            entry = make_entry(name, task, schedule=schedule, **options)
        except TypeError as exc:
            raise TypeError(f"cron entry {name!r}: {exc}") from None
        pack_args(entry.args, entry.kwargs)
        unknown = set(entry.options) - _CRON_JOB_OPTIONS
        if unknown:
            raise TypeError(f"cron entry {name!r}: unknown job option(s): "
                            f"{', '.join(sorted(unknown))}")
        try:
            _check_options({**entry.options, "queue": entry.queue or "default",
                            **({} if entry.priority is None else {"priority": entry.priority})})
        except ValueError as exc:
            raise ValueError(f"cron entry {name!r}: {exc}") from None
        self._crons[name] = entry
        return entry

    def cron_entries(self) -> list[CronEntry]:
        """Declared cron entries, sorted by name."""
        return [self._crons[name] for name in sorted(self._crons)]


def _check_runner(name: str, fn: Callable[..., Any], is_async: bool,
                  options: Mapping[str, Any]) -> None:
    """Refuse a loop or an isolation the function cannot run with."""
    loop, isolation = options.get("loop", "trio"), options.get("isolation", "thread")
    if loop not in LOOPS:
        raise ValueError(f"task {name!r}: loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"task {name!r}: isolation must be one of {', '.join(ISOLATIONS)}, "
                         f"got {isolation!r}")
    if loop != "trio" and not is_async:
        raise ValueError(f"task {name!r}: loop={loop!r} needs an async def function")
    if isolation == "process":
        if is_async:
            raise ValueError(f"task {name!r}: isolation='process' needs a sync function")
        if fn.__module__ == "__main__" or "<" in fn.__qualname__:
            raise ValueError(f"task {name!r}: isolation='process' needs a function defined "
                             "at the top level of an importable module")


def _check_options(options: Mapping[str, Any]) -> None:
    for name in ("priority", "result_ttl_s"):
        if name in options and (isinstance(options[name], bool)
                                or not isinstance(options[name], int | float)):
            raise ValueError(f"{name} must be a number, got {options[name]!r}")
    if "max_attempts" in options and not isinstance(options["max_attempts"], int):
        raise ValueError(f"max_attempts must be an int, got {options['max_attempts']!r}")
    timeout = options.get("timeout_s")
    if timeout is not None and not isinstance(timeout, int | float):
        raise ValueError(f"timeout_s must be a number or None, got {timeout!r}")
    check_job_fields(priority=options.get("priority"), max_attempts=options.get("max_attempts"),
                     timeout_s=timeout, result_ttl_s=options.get("result_ttl_s"))
    retry = options.get("retry", DEFAULT_RETRY)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ValueError(f"retry must be a RetryPolicy or None, got {retry!r}")
    queue = options.get("queue", "default")
    if not (isinstance(queue, str) and _NAME.match(queue)):
        raise ValueError(f"invalid queue name {queue!r}")


# -- arguments -----------------------------------------------------------------------


def pack_args(args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> bytes:
    """Encode job arguments as msgpack `[args, kwargs]`.

    Raises:
        InvalidArguments: a value is not a msgpack value (the message names its type), a
            kwargs key is not a string, or the encoding exceeds 512 KiB.
    """
    if not isinstance(args, list | tuple):
        raise InvalidArguments(f"args must be a list or tuple, got {type(args).__name__}")
    kwargs = dict(kwargs or {})
    if not all(isinstance(k, str) for k in kwargs):
        raise InvalidArguments("kwargs keys must be strings")
    try:
        data: bytes = msgpack.packb([list(args), kwargs], default=_refuse, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArguments(f"arguments must be msgpack values: {exc}") from None
    if len(data) > ARGS_BYTES_MAX:
        raise InvalidArguments(
            f"arguments encode to {len(data)} bytes; the limit is {ARGS_BYTES_MAX}"
        )
    return data


def _refuse(value: object) -> Any:
    raise TypeError(
        f"{type(value).__name__} is not a msgpack value "
        "(use None, bool, int, float, str, bytes, lists and dicts with str keys)"
    )


def unpack_args(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode what `pack_args` produced.

    Raises:
        InvalidArguments: not `[list, map]` msgpack.
    """
    try:
        value = msgpack.unpackb(data, strict_map_key=True, max_ext_len=0)
    except Exception as exc:
        raise InvalidArguments(f"arguments are not valid msgpack: {exc}") from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
            and isinstance(value[1], dict)):
        raise InvalidArguments("arguments must encode [args_list, kwargs_map]")
    return value[0], value[1]


# -- the job context -------------------------------------------------------------------


@attrs.define(eq=False)
class JobContext:
    """What a running job knows of itself. Get it with `current_job()`.

    Attributes:
        job_id: the job's id. attempt: 1 for the first attempt. task: the task name.
    """

    job_id: str
    attempt: int
    task: str
    _report: Callable[[float, str], None]
    _cancelled: Callable[[], bool]

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress, 0.0-1.0, with an optional message; subscribers see it live.

        Raises:
            ValueError: fraction outside [0, 1].
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        self._report(float(fraction), str(message)[:1000])

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (sync tasks should poll this)."""
        return self._cancelled()

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if cancellation was requested (for sync tasks)."""
        from gotask._errors import JobCancelled

        if self._cancelled():
            raise JobCancelled(f"job {self.job_id} was cancelled")


_CURRENT: contextvars.ContextVar[JobContext] = contextvars.ContextVar("gotask_job")


def current_job() -> JobContext:
    """Return the context of the job running in this task or thread.

    Raises:
        LookupError: called outside a job.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError("current_job() called outside a running job") from None


def set_current_job(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Bind `ctx` as the current job (used by the worker supervisor)."""
    return _CURRENT.set(ctx)


def reset_current_job(token: contextvars.Token[JobContext]) -> None:
    """Unbind the job bound by `set_current_job` (used by the worker supervisor)."""
    _CURRENT.reset(token)

