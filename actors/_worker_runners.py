"""Where a task's function runs, other than trio and the node's threads: the runners the
WorkerSupervisor calls.

Rules of this module:
- `loop="asyncio"` tasks share one asyncio loop (uvloop when installed) in one thread of
  the node (`AioThread`), started when the first such job runs and stopped with the pool.
  The job's `current_job()` context is bound inside its asyncio task.
- Cancelling the trio caller (a cancellation, a timeout, a drain) cancels the asyncio task
  and waits until it has finished, so an attempt never outlives its outcome.
- `isolation="process"` tasks run in the pool of child processes (`_worker_process`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from gotask._app import JobContext, ProcessLimits, Task, pack_args, set_current_job
from gotask.runtime._aiothread import AioThread

from ._worker_process import ProcessPool

__all__ = ["Runners"]


async def _bound(jctx: JobContext, fn: Callable[..., Any], args: list[Any],
                 kwargs: dict[str, Any]) -> Any:
    """Runs in the asyncio loop, in the asyncio task's own context."""
    set_current_job(jctx)
    return await fn(*args, **kwargs)


@attrs.define(eq=False)
class Runners:
    """The asyncio loop (and process pool) of one worker pool, started on first use."""

    limits: ProcessLimits = attrs.Factory(ProcessLimits)
    aio: AioThread | None = None
    processes: ProcessPool | None = None

    async def run_asyncio(self, fn: Callable[..., Any], args: list[Any],
                          kwargs: dict[str, Any], jctx: JobContext) -> Any:
        """Await `fn(*args, **kwargs)` in the asyncio loop with `jctx` as its job."""
        if self.aio is None:
            self.aio = AioThread("gotask-asyncio-tasks")
        return await self.aio.call(_bound, jctx, fn, args, kwargs)

    async def run_process(self, task: Task, args: list[Any], kwargs: dict[str, Any],
                          jctx: JobContext) -> Any:
        """Run sync `task` in a child process with `jctx` as its job; see `_worker_process`."""
        if self.processes is None:
            self.processes = ProcessPool(self.limits)
        return await self.processes.run(task, pack_args(args, kwargs), jctx, jctx.progress)

    async def aclose(self) -> None:
        """Stop the asyncio loop and the idle children, if they were started."""
        if self.processes is not None:
            await self.processes.aclose()
        if self.aio is not None:
            aio, self.aio = self.aio, None
            await aio.aclose()
