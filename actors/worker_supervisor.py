"""The WorkerSupervisor: runs leased jobs and settles them with storage.

Rules of this module:
- `concurrency` long-lived worker tasks take jobs from one ready deque: no task is
  spawned per job, and a worker that finishes a job takes the next one without a
  context switch (it checkpoints every few jobs so others get to run).
- Async tasks run in the worker's trio task; sync tasks in threads under a capacity
  limit. A timeout or a cancellation of a sync task abandons its thread (Python cannot
  kill one): the job is settled at once, the thread's eventual result is ignored.
- Outcomes are buffered in `WorkerCore` and flushed in batches (one `AckJobs`, one
  `NackJobs`, one `ReportProgress` per flush); a flush that fails is retried, never
  dropped. Freed slots go back to the Dispatcher after their outcomes are stored.
- Heartbeats extend every lease this node holds, in one command. A "stale" answer
  means another worker may own the job now: it is cancelled here and never settled.
  A "cancel" answer cancels the job cooperatively (trio cancel scope, or the flag
  that `current_job().cancelled` reads in a thread).
- `Drain` stops leasing, lets running jobs finish within the grace period, then
  cancels the rest and releases every unfinished lease so it is leased again at once.
"""

from __future__ import annotations

import functools
import logging
import math
import traceback
from collections import deque
from typing import Any

import attrs
import msgpack
import trio

from gotask._app import App, JobContext, reset_current_job, set_current_job, unpack_args
from gotask._errors import ActorError, JobCancelled, JobTimeout, RemoteActorError
from gotask._job import JobRecord, LeaseToken
from gotask._messages import CancelRunning, Drain, PauseWorkers, RunJobs, SlotsFreed
from gotask._retry import decide
from gotask.runtime import ActorContext, Address, Ok, World

from .storage.base import (
    BATCH_MAX,
    AckItem,
    AckJobs,
    Heartbeat,
    HeartbeatReply,
    NackItem,
    NackJobs,
    Outcome,
    ProgressItem,
    ReleaseJobs,
    ReportProgress,
    Status,
)

__all__ = ["WorkerConfig", "WorkerCore", "run_workers"]

log = logging.getLogger("gotask.workers")
CHECKPOINT_EVERY = 16
#: Workers woken and not yet running, at most. A worker that takes a job while more
#: wait wakes the next one, so quick jobs cost a task switch per few jobs, not one per
#: job, while jobs that block still spread over every slot within a few scheduler rounds.
WAKING_MAX = 2
#: Errors a storage actor answers with that mean "not now", not "never".
RETRYABLE_REMOTE = frozenset({"StorageUnavailable", "CallTimeout"})
#: Largest result kept, so that a batch of acknowledgements fits the wire's frames.
RESULT_BYTES_MAX = 256 * 1024
CHUNK_BYTES_MAX = 768 * 1024


@attrs.frozen
class WorkerConfig:
    """Settings of one node's worker pool (durations in seconds)."""

    concurrency: int = 64
    threads: int = 16
    lease_timeout_s: float = 30.0
    heartbeat_s: float = 10.0
    retry_backoff_s: float = 0.5
    #: Outcome batches at storage at once: 1 suits local memory storage; a remote
    #: store (Redis: a thread hop and a network round trip) gains from 3.
    flushers: int = 1


@attrs.define(eq=False)
class _Running:
    record: JobRecord
    scope: trio.CancelScope | None = None
    cancel_requested: bool = False
    stale: bool = False
    released: bool = False


_Taken = tuple[list[AckItem], list[NackItem], list[LeaseToken], list[ProgressItem], int]


@attrs.define
class WorkerCore:
    """Bookkeeping of leased jobs and buffered outcomes; pure and synchronous."""

    ready: deque[JobRecord] = attrs.Factory(deque)
    running: dict[str, _Running] = attrs.Factory(dict)
    acks: list[AckItem] = attrs.Factory(list)
    nacks: list[NackItem] = attrs.Factory(list)
    releases: list[LeaseToken] = attrs.Factory(list)
    progress: dict[str, ProgressItem] = attrs.Factory(dict)
    dropped: int = 0
    unstored: dict[tuple[str, int], None] = attrs.Factory(dict)  # (job id, attempt)

    def add(self, jobs: tuple[JobRecord, ...]) -> None:
        """Leased jobs arrived. A new lease of a job this node still runs under an older
        attempt proves that attempt stale (storage leases a job only once its previous
        lease is closed): it is cancelled and will not be settled."""
        self.ready.extend(jobs)
        for job in jobs:
            older = self.running.get(job.id)
            if older is not None:
                older.stale = True
                _cancel(older)
            self.running[job.id] = _Running(job)

    def tokens(self) -> list[LeaseToken]:
        """Every lease this node holds and storage has not settled: running jobs, and
        finished ones whose outcome is not stored yet (their leases must not expire
        while the outcome waits, or the job runs again)."""
        return [r.record.token for r in self.running.values()] + [
            LeaseToken(job_id, attempt) for job_id, attempt in self.unstored]

    def settle(self, record: JobRecord, item: AckItem | NackItem | None) -> None:
        """A job finished; `item` is its outcome, None when it must not be settled."""
        run = self.running.get(record.id)
        if run is not None and run.record.attempt == record.attempt:
            del self.running[record.id]
        else:
            run = None  # a newer lease of the job replaced this one
        if run is not None and run.released:
            self.releases.append(run.record.token)
        elif isinstance(item, AckItem):
            self.acks.append(item)
        elif isinstance(item, NackItem):
            self.nacks.append(item)
        else:
            self.dropped += 1
            return
        self.unstored[record.id, record.attempt] = None

    def stored(self, cmd: AckJobs | NackJobs | ReleaseJobs) -> None:
        """Storage answered `cmd`: its leases need no more heartbeats from here."""
        pop = self.unstored.pop
        if isinstance(cmd, ReleaseJobs):
            for token in cmd.tokens:
                pop((token.job_id, token.attempt), None)
        else:
            for item in cmd.items:
                pop((item.job_id, item.attempt), None)

    def take(self) -> _Taken:
        """Take every buffered outcome, and how many slots they free."""
        acks, nacks, rel = self.acks, self.nacks, self.releases
        prog = list(self.progress.values())
        self.acks, self.nacks, self.releases, self.progress = [], [], [], {}
        freed = len(acks) + len(nacks) + len(rel) + self.dropped
        self.dropped = 0
        return acks, nacks, rel, prog, freed

    def heartbeat_answers(self, tokens: list[LeaseToken], statuses: tuple[str, ...]) -> None:
        """Apply a heartbeat's answers: stop stale jobs, cancel the ones asked to."""
        for token, status in zip(tokens, statuses, strict=True):
            run = self.running.get(token.job_id)
            if run is None or run.record.attempt != token.attempt:
                continue
            if status in (Status.STALE, Status.MISSING):
                run.stale = True
                _cancel(run)
            elif status == Status.CANCEL:
                run.cancel_requested = True
                _cancel(run)


def _cancel(run: _Running) -> None:
    if run.scope is not None:
        run.scope.cancel()


@attrs.define(eq=False)
class _Pool:
    """The shell's shared state: the core plus what only trio code touches."""

    ctx: ActorContext
    app: App
    storage: Address
    dispatcher: Address
    config: WorkerConfig
    core: WorkerCore = attrs.Factory(WorkerCore)
    idle: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    flush_needed: trio.Event = attrs.Factory(trio.Event)
    limiter: trio.CapacityLimiter = attrs.field(default=None)
    waking: int = 0

    @property
    def world(self) -> World:
        return self.ctx.node.world

    def wake_flusher(self) -> None:
        self.flush_needed.set()

    def wake_worker(self) -> None:
        """Wake idle workers for the ready jobs, keeping at most WAKING_MAX on the way."""
        want = min(WAKING_MAX - self.waking, len(self.core.ready))
        if want > 0:
            self.waking += len(self.idle.unpark(count=want))


async def run_workers(
    ctx: ActorContext,
    *,
    app: App,
    storage: Address,
    dispatcher: Address,
    config: WorkerConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the worker pool of this node until cancelled or drained."""
    pool = _Pool(ctx, app, storage, dispatcher, config)
    pool.limiter = trio.CapacityLimiter(config.threads)
    async with trio.open_nursery() as nursery:
        for _ in range(config.concurrency):
            nursery.start_soon(_worker, pool)
        for _ in range(config.flushers):
            nursery.start_soon(_flusher, pool)
        nursery.start_soon(_heartbeater, pool)
        task_status.started()
        await _inbox_loop(pool)
        nursery.cancel_scope.cancel()


async def _inbox_loop(pool: _Pool) -> None:
    while True:
        for env in await pool.ctx.receive_batch():
            match env.msg:
                case RunJobs(jobs=jobs):
                    pool.core.add(jobs)
                    pool.wake_worker()
                case CancelRunning(tokens=tokens):
                    pool.core.heartbeat_answers(list(tokens), (Status.CANCEL,) * len(tokens))
                case Drain(grace_s=grace_s):
                    await _drain(pool, grace_s)
                    await pool.ctx.reply(env, Ok())
                    return
                case other:
                    log.warning("worker supervisor ignored unexpected %s", type(other).__name__)


# -- running jobs ----------------------------------------------------------------------


async def _worker(pool: _Pool) -> None:
    # One cancel scope serves every job this worker runs until one is cancelled or
    # times out (entering a trio cancel scope costs more than a no-op job).
    while True:
        with trio.CancelScope() as scope:
            await _work(pool, scope)


async def _work(pool: _Pool, scope: trio.CancelScope) -> None:
    done = 0
    while not scope.cancel_called:
        if not pool.core.ready:
            await pool.idle.park()
            pool.waking -= 1
            continue
        record = pool.core.ready.popleft()
        pool.wake_worker()
        item = await _run_one(pool, scope, record)
        pool.core.settle(record, item)
        pool.wake_flusher()
        done += 1
        if done % CHECKPOINT_EVERY == 0 and not scope.cancel_called:
            await trio.lowlevel.checkpoint()


async def _run_one(
    pool: _Pool, scope: trio.CancelScope, record: JobRecord
) -> AckItem | NackItem | None:
    run = pool.core.running.get(record.id)
    if run is None or run.record.attempt != record.attempt or run.stale or run.released:
        return None
    if run.cancel_requested:
        return _nack(record, _cancelled(record), None, Outcome.CANCELLED)
    try:
        task = pool.app.get(record.task)
        args, kwargs = unpack_args(record.args)
    except Exception as exc:
        return _nack(record, exc, None, Outcome.DEAD)
    jctx = JobContext(record.id, record.attempt, record.task,
                      functools.partial(_report, pool, record), lambda: run.cancel_requested)
    token = set_current_job(jctx)
    timeout = record.timeout_s if record.timeout_s is not None else task.timeout_s
    if timeout:
        scope.deadline = trio.current_time() + timeout
    run.scope = scope
    try:
        result = await _call(pool, task, args, kwargs)
    except Exception as exc:
        return _failed(pool, record, task, exc)
    except BaseException as exc:
        if not (scope.cancel_called and _only_cancelled(exc)):
            raise  # the node is stopping: not this job's cancellation
        if run.stale:
            return None
        if run.cancel_requested or run.released:
            return _nack(record, _cancelled(record), None, Outcome.CANCELLED)
        err = JobTimeout(f"job ran longer than its timeout of {timeout}s")
        return _failed(pool, record, task, err)
    finally:
        run.scope = None
        reset_current_job(token)
        if timeout and not scope.cancel_called:
            scope.deadline = math.inf
    return _ack(record, result)


def _cancelled(record: JobRecord) -> JobCancelled:
    return JobCancelled(f"job {record.id} was cancelled")


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


async def _call(pool: _Pool, task: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if task.is_async:
        return await task.fn(*args, **kwargs)
    fn = functools.partial(task.fn, *args, **kwargs)
    return await trio.to_thread.run_sync(fn, limiter=pool.limiter, abandon_on_cancel=True)


def _failed(pool: _Pool, record: JobRecord, task: Any, exc: Exception) -> NackItem:
    delay = decide(exc, record.attempt, pool.world.rng, task.retry, task.retry_rules)
    outcome = Outcome.DEAD if delay is None else Outcome.RETRY
    return _nack(record, exc, delay, outcome)


def _ack(record: JobRecord, result: Any) -> AckItem | NackItem:
    try:
        packed = msgpack.packb(result)
    except (TypeError, ValueError, OverflowError) as exc:
        err: Exception = TypeError(f"the task returned a value that is not msgpack: {exc}")
        return _nack(record, err, None, Outcome.DEAD)
    if len(packed) > RESULT_BYTES_MAX:
        err = ValueError(f"the task's result encodes to {len(packed)} bytes; "
                         f"the limit is {RESULT_BYTES_MAX}")
        return _nack(record, err, None, Outcome.DEAD)
    return AckItem(record.id, record.attempt, packed, record.queue)


def _nack(
    record: JobRecord, exc: BaseException, delay: float | None, outcome: Outcome
) -> NackItem:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]
    return NackItem(record.id, record.attempt, type(exc).__name__, str(exc)[:2000], tb,
                    delay, outcome.value)


def _report(pool: _Pool, record: JobRecord, fraction: float, message: str) -> None:
    # Called from the job: from trio directly, or from its thread through trio's token.
    item = ProgressItem(record.id, record.attempt, fraction, message)
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        trio.from_thread.run_sync(_store_progress, pool, item)
        return
    _store_progress(pool, item)


def _store_progress(pool: _Pool, item: ProgressItem) -> None:
    run = pool.core.running.get(item.job_id)
    if run is not None and not run.stale:
        pool.core.progress[item.job_id] = item
        pool.wake_flusher()


# -- talking to storage -----------------------------------------------------------------


async def _flusher(pool: _Pool) -> None:
    # `flushers` of these run at once: while one waits for storage's answer, the next
    # takes the outcomes buffered meanwhile, so storage is never idle between batches.
    while True:
        await pool.flush_needed.wait()
        pool.flush_needed = trio.Event()
        acks, nacks, rel, prog, freed = pool.core.take()
        if prog:
            await _store(pool, ReportProgress(tuple(prog)))
        for cmd in _chunks(acks, AckJobs) + _chunks(nacks, NackJobs) + _chunks(rel, ReleaseJobs):
            await _store(pool, cmd)
            pool.core.stored(cmd)
        if freed:
            await pool.ctx.send(pool.dispatcher, SlotsFreed(freed))


def _chunks(items: list[Any], cls: Any) -> list[Any]:
    """Commands of at most BATCH_MAX items and about CHUNK_BYTES_MAX bytes each, so
    every one fits a wire frame when storage is on another node."""
    out: list[Any] = []
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_size = _size(item)
        if chunk and (len(chunk) >= BATCH_MAX or size + item_size > CHUNK_BYTES_MAX):
            out.append(cls(tuple(chunk)))
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        out.append(cls(tuple(chunk)))
    return out


def _size(item: Any) -> int:
    if isinstance(item, AckItem):
        return len(item.result) + 64
    if isinstance(item, NackItem):
        return len(item.error) + len(item.traceback) + len(item.error_type) + 128
    return 64


async def _store(pool: _Pool, cmd: Any) -> Any:
    """Call storage until it answers: an outcome is never dropped while storage is
    unreachable. A command storage rejects is logged; its leases expire and the jobs
    run again, so at-least-once still holds."""
    while True:
        try:
            return await pool.ctx.call(pool.storage, cmd, timeout_s=30)
        except RemoteActorError as exc:
            if exc.type_name not in RETRYABLE_REMOTE:
                log.error("storage rejected %s: %s", type(cmd).__name__, exc)
                return None
            log.warning("storage unavailable for %s (%s); retrying", type(cmd).__name__, exc)
            await trio.sleep(pool.config.retry_backoff_s * pool.world.jitter(0.5, 1.5))
        except (ActorError, trio.BrokenResourceError) as exc:
            log.warning("storage %s failed on %s (%s); retrying", pool.storage,
                        type(cmd).__name__, exc)
            await trio.sleep(pool.config.retry_backoff_s * pool.world.jitter(0.5, 1.5))


async def _heartbeater(pool: _Pool) -> None:
    while True:
        await trio.sleep(pool.config.heartbeat_s)
        tokens = pool.core.tokens()
        for i in range(0, len(tokens), BATCH_MAX):
            chunk = tokens[i:i + BATCH_MAX]
            cmd = Heartbeat(pool.ctx.node.name, tuple(chunk), pool.config.lease_timeout_s)
            try:
                reply = await pool.ctx.call(pool.storage, cmd, timeout_s=pool.config.heartbeat_s)
            except (ActorError, trio.BrokenResourceError) as exc:
                log.warning("heartbeat to %s failed: %s", pool.storage, exc)
                continue
            assert isinstance(reply, HeartbeatReply)
            pool.core.heartbeat_answers(chunk, reply.statuses)


async def _drain(pool: _Pool, grace_s: float) -> None:
    await pool.ctx.call(pool.dispatcher, PauseWorkers(True))
    while pool.core.ready:
        record = pool.core.ready.popleft()
        run = pool.core.running.get(record.id)
        if run is not None and run.record.attempt == record.attempt:
            run.released = True
        pool.core.settle(record, None)
    with trio.move_on_after(grace_s):
        while pool.core.running:
            await trio.sleep(0.05)
    for run in pool.core.running.values():
        run.released = True
        _cancel(run)
    while pool.core.running:
        await trio.sleep(0.01)
    acks, nacks, rel, _, _ = pool.core.take()
    for cmd in _chunks(acks, AckJobs) + _chunks(nacks, NackJobs) + _chunks(rel, ReleaseJobs):
        await _store(pool, cmd)
