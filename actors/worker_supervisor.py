"""The WorkerSupervisor: runs leased jobs; its core (`_worker_core`) settles them.

Rules of this module (the shell; the decisions and their rules are in `_worker_core`):
- `concurrency` long-lived worker tasks take jobs from the core's ready queue: no task
  is spawned per job, and a worker that finishes a job takes the next one without a
  context switch (it checkpoints every few jobs so others get to run). Finishing a job
  is a plain call into the core; the core is woken by one `OutcomesReady` message per
  flush decision, not per job.
- Async tasks run in the worker's trio task (or, with `loop="asyncio"`, in the node's
  asyncio loop: `_worker_runners`); sync tasks in threads under a capacity limit.
  A timeout or a cancellation of a sync task abandons its thread (Python cannot
  kill one): the job is settled at once, the thread's eventual result is ignored, and
  the thread is replaced, within bounds (`_worker_threads`).
- Sync tasks with `isolation="process"` run in child processes (`_worker_process`).
- A job is cancelled (a `CancelJob` effect) through the cancel scope it runs under, or
  through the flag that `current_job().cancelled` reads in a thread.
- With the node's `JobMetrics`, each settled attempt (outcome, run time, pickup latency
  from due time to start) is recorded there by the worker that ran it: one tuple, no
  message. Busy slots are the attempts with a cancel scope now.
- Everything else (the inbox, heartbeats, flushes, drain) is `actors._shell` carrying
  out what the core returns.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import attrs
import trio

from gotask._app import App, JobContext, reset_current_job, set_current_job, unpack_args
from gotask._errors import JobTimeout
from gotask._job import JobRecord
from gotask._job_metrics import JobMetrics
from gotask._retry import decide
from gotask.runtime import ActorContext, Address, World

from . import _job_log
from ._shell import Shell
from ._worker_core import WORKER_MSGS, OutcomesReady, Running, Settled, WorkerConfig, WorkerCore
from ._worker_outcomes import ack, cancelled, nack, settled_outcome
from ._worker_process import ChildTaskFailed
from ._worker_runners import Runners
from ._worker_threads import ThreadBook, run_in_thread
from .storage.base import NackItem, Outcome, ProgressItem

__all__ = ["ThreadBook", "WorkerConfig", "WorkerCore", "run_workers", "thread_book"]

log = logging.getLogger("gotask.workers")
CHECKPOINT_EVERY = 16
#: Workers woken and not yet running, at most. A worker that takes a job while more
#: wait wakes the next one, so quick jobs cost a task switch per few jobs, not one per
#: job, while jobs that block still spread over every slot within a few scheduler rounds.
WAKING_MAX = 2


@attrs.define(eq=False)
class _Pool:
    """The shell's state: the core plus what only trio code touches."""

    ctx: ActorContext
    app: App
    core: WorkerCore
    threads: ThreadBook
    idle: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    waking: int = 0
    #: The cancel scope of every attempt running now, by (job id, attempt).
    scopes: dict[tuple[str, int], trio.CancelScope] = attrs.Factory(dict)
    metrics: JobMetrics | None = None
    runners: Runners = attrs.Factory(Runners)
    token: trio.lowlevel.TrioToken = attrs.Factory(trio.lowlevel.current_trio_token)

    @property
    def world(self) -> World:
        return self.ctx.node.world

    def start_jobs(self, count: int) -> None:
        """Wake idle workers for the ready jobs, keeping at most WAKING_MAX on the way."""
        want = min(WAKING_MAX - self.waking, len(self.core.ready))
        if want > 0:
            self.waking += len(self.idle.unpark(count=want))

    def cancel_job(self, job_id: str, attempt: int) -> None:
        """Cancel that attempt if a worker runs it now (else the core skips it)."""
        scope = self.scopes.get((job_id, attempt))
        if scope is not None:
            scope.cancel()

    def wake_core(self) -> None:
        """Tell the core outcomes are waiting. A full inbox needs no message: the shell
        ticks the core after the batch it is about to take."""
        try:
            self.ctx.send_nowait(self.ctx.address, OutcomesReady())
        except trio.WouldBlock:
            pass


async def run_workers(
    ctx: ActorContext,
    *,
    app: App,
    storage: Address,
    dispatcher: Address,
    config: WorkerConfig,
    threads: ThreadBook | None = None,
    metrics: JobMetrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the worker pool of this node until cancelled or drained.

    `threads` is the book of its sync threads, for the node to report (default: a new one
    of `config.threads` threads, as many replaceable); `metrics` counts the jobs run."""
    core = WorkerCore(ctx.node.name, storage, dispatcher, config)
    book = threads or thread_book(config.threads)
    pool = _Pool(ctx, app, core, book, metrics=metrics, runners=Runners(config.processes))
    if metrics is not None:
        metrics.slots_total = config.concurrency
        metrics.slots_busy = lambda: len(pool.scopes)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(config.concurrency):
                nursery.start_soon(_worker, pool)
            task_status.started()
            await Shell(ctx, nursery, log, WORKER_MSGS, runner=pool).serve(core)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await pool.runners.aclose()


def thread_book(threads: int) -> ThreadBook:
    """The thread book of a pool of `threads` threads; as many abandoned ones are
    replaced before the node counts as degraded."""
    return ThreadBook(trio.CapacityLimiter(threads), replace_max=threads)


async def _worker(pool: _Pool) -> None:
    # One cancel scope serves every job this worker runs until one is cancelled or
    # times out (entering a trio cancel scope costs more than a no-op job).
    while True:
        with trio.CancelScope() as scope:
            await _work(pool, scope)


async def _work(pool: _Pool, scope: trio.CancelScope) -> None:
    done = 0
    core = pool.core
    while not scope.cancel_called:
        record = core.next_job()
        if record is None:
            await pool.idle.park()
            pool.waking -= 1
            continue
        pool.start_jobs(1)
        start = core.start(record)
        if isinstance(start, Running):
            item = await _observed(pool, scope, start) \
                if pool.metrics is not None or _job_log.enabled() \
                else await _run(pool, scope, start)
        else:
            item = start
        if core.finished(record, item):
            pool.wake_core()
        done += 1
        if done % CHECKPOINT_EVERY == 0 and not scope.cancel_called:
            await trio.lowlevel.checkpoint()


async def _observed(pool: _Pool, scope: trio.CancelScope, run: Running) -> Settled:
    """Run `run` with its job log lines and its metrics (whichever are on)."""
    record, metrics, logged = run.record, pool.metrics, _job_log.enabled()
    if logged:
        _job_log.started(record)
    began = pool.world.wall()
    item = await _run(pool, scope, run)
    took = pool.world.wall() - began
    if run.released or run.stale:  # a released job is logged once storage has it
        return item
    if logged:
        _job_log.settled(record, item, took)
    outcome = settled_outcome(record, item)
    if metrics is not None and outcome is not None:
        metrics.ran(record.queue, record.task, outcome, took,
                    max(0.0, began - record.due_at), record.attempt)
    return item


async def _run(pool: _Pool, scope: trio.CancelScope, run: Running) -> Settled:
    record = run.record
    try:
        task = pool.app.get(record.task)
        args, kwargs = unpack_args(record.args)
    except Exception as exc:
        return nack(record, exc, None, Outcome.DEAD)
    jctx = JobContext(record.id, record.attempt, record.task,
                      functools.partial(_report, pool, record), lambda: run.cancel_requested)
    token = set_current_job(jctx)
    timeout = record.timeout_s if record.timeout_s is not None else task.timeout_s
    if timeout:
        scope.deadline = trio.current_time() + timeout
    key = (record.id, record.attempt)
    pool.scopes[key] = scope
    try:
        result = await _call(pool, task, args, kwargs, jctx)
    except Exception as exc:
        return _failed(pool, record, task, exc)
    except BaseException as exc:
        if not (scope.cancel_called and _only_cancelled(exc)):
            raise  # the node is stopping: not this job's cancellation
        if run.stale:
            return None
        if run.cancel_requested or run.released:
            return cancelled(record)
        err = JobTimeout(f"job ran longer than its timeout of {timeout}s")
        return _failed(pool, record, task, err)
    finally:
        del pool.scopes[key]
        reset_current_job(token)
        if timeout and not scope.cancel_called:
            scope.deadline = math.inf
    return ack(record, result, pool.core.config.result_bytes_max)


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


async def _call(pool: _Pool, task: Any, args: list[Any], kwargs: dict[str, Any],
                jctx: JobContext) -> Any:
    if task.is_async and task.loop == "asyncio":
        return await pool.runners.run_asyncio(task.fn, args, kwargs, jctx)
    if task.is_async:
        return await task.fn(*args, **kwargs)
    if task.isolation == "process":
        return await pool.runners.run_process(task, args, kwargs, jctx)
    return await run_in_thread(pool.threads, functools.partial(task.fn, *args, **kwargs))


def _failed(pool: _Pool, record: JobRecord, task: Any, exc: Exception) -> NackItem:
    delay = decide(exc, record.attempt, pool.world.rng, task.retry, task.retry_rules)
    outcome = Outcome.DEAD if delay is None else Outcome.RETRY
    item = nack(record, exc, delay, outcome)
    if isinstance(exc, ChildTaskFailed):  # keep the child's type name and traceback
        return attrs.evolve(item, error_type=exc.type_name, traceback=exc.tb)
    return item


def _report(pool: _Pool, record: JobRecord, fraction: float, message: str) -> None:
    # Called from the job: from trio directly, or from its thread or the asyncio loop
    # through trio's token (without waiting: a loop of thousands of jobs must not block).
    item = ProgressItem(record.id, record.attempt, fraction, message)
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pool.token.run_sync_soon(_reported, pool, item)
        return
    _reported(pool, item)


def _reported(pool: _Pool, item: ProgressItem) -> None:
    if pool.core.reported(item):
        pool.wake_core()
