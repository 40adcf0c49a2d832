"""The Redis storage actor: the storage contract on a Redis shared by every node.

Rules of this module:
- `open_redis_storage(url)` connects (in its own asyncio thread, `_aiothread`) and
  checks the server; the node keeps the returned `RedisStorage` across restarts of
  the actor, like the memory core. `run_redis_storage` is the actor shell.
- The shell drains its inbox in batches; everything a batch needs from Redis crosses
  into the asyncio thread in ONE call and comes back in one: the batch's commands,
  the leases of parked `LeaseWait`s worth looking at again, and the reads that refresh
  watched jobs. Redis runs them as one pipeline of Lua scripts (`_redis_scripts`),
  each atomic, in order; the storage clock is Redis `TIME`, read inside each script.
- Events: every script that changes jobs publishes on the events channel; a task of
  the actor waits on the subscription (a blocking read, no polling) and feeds the
  events back into the inbox. They wake parked leases (jobs became ready in their
  queues, or will at a due time: a timer is set for it), refresh watched jobs for
  `JobChanged` pushes, and carry cancellations to this node's workers (`CancelRunning`)
  whichever node asked. So watchers and dispatchers on any node see changes made by
  any node's storage actor. A watcher's first read is a `WatchRead`, which flags the
  jobs in Redis: events name only flagged jobs.
- A lost subscription is remade; parked leases and watched jobs are then looked at
  again, since events may have been missed.
- A failed command is answered with its error (`StorageUnavailable` while Redis is
  unreachable, see `_redis_backend`), and so is a reply too big for the wire; the
  actor goes on. Other exceptions crash it and its supervisor restarts it around the
  same `RedisStorage`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio

from gotask._errors import GoTaskError, StorageError
from gotask._job import TERMINAL, JobRecord, LeaseToken
from gotask._messages import (
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    Unpark,
    UnwatchJobs,
    WatchJobs,
)
from gotask.runtime import ActorContext, Address, Envelope, Ok

from ._aiothread import AioThread, Pending
from ._redis_backend import Events, RedisBackend, RedisSettings
from ._redis_codec import Leased, WatchRead
from .base import (
    EnqueueJobs,
    GetJobs,
    GetJobsReply,
    LeaseJobs,
    LeaseReply,
)

__all__ = [
    "BridgedStorage",
    "RedisSettings",
    "RedisStorage",
    "delete_prefix",
    "open_redis_storage",
    "run_redis_storage",
    "with_prefix",
]

WATCHERS_MAX = 100_000
#: Most batches in Redis at once.
INFLIGHT_MAX = 4

Handler = Callable[[Any], Awaitable[None]]


class BridgedBackend(Protocol):
    """What the shell needs of a backend living in an `AioThread` (Redis, PostgreSQL)."""

    async def execute(self, cmds: list[Any], now: float | None = None,
                      jitter: float = 1.0) -> list[Any]:
        """Run a batch of commands; each one's reply (`Leased` for a lease) or error."""
        ...

    async def next_events(self, jitter: float = 1.0) -> Events:
        """Wait for the next events."""
        ...


class BridgedStorage(Protocol):
    """A connected backend and the asyncio thread it lives in."""

    @property
    def aio(self) -> AioThread:
        """The asyncio thread."""
        ...

    @property
    def backend(self) -> BridgedBackend:
        """The backend, to be called in `aio` only."""
        ...


@attrs.define(eq=False)
class RedisStorage:
    """A connected Redis backend and the asyncio thread it lives in."""

    settings: RedisSettings
    aio: AioThread
    backend: RedisBackend

    async def aclose(self) -> None:
        """Close the connections, then stop the thread."""
        try:
            await self.aio.call(self.backend.close)
        finally:
            await self.aio.aclose()


async def open_redis_storage(url: str) -> RedisStorage:
    """Connect to the Redis at `url` (`redis://host:port/db?prefix=P`).

    Raises:
        ConfigError: a malformed URL.
        StorageUnavailable: Redis cannot be reached.
        StorageError: Redis may evict keys (maxmemory-policy allkeys-*).
    """
    settings = RedisSettings.from_url(url)
    aio = AioThread("gotask-redis")
    backend = RedisBackend(settings)
    try:
        await aio.call(backend.open)
    except BaseException:
        await aio.aclose()
        raise
    return RedisStorage(settings, aio, backend)


def with_prefix(url: str, prefix: str) -> str:
    """`url` with its key prefix replaced by `prefix`."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def delete_prefix(url: str) -> int:
    """Delete every key under the URL's prefix (tests, benchmarks); returns how many.

    Synchronous and slow (SCAN): never on a hot path.
    """
    import redis

    settings = RedisSettings.from_url(url)
    client = redis.Redis.from_url(settings.url)
    try:
        keys = list(client.scan_iter(match=f"{settings.prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i:i + 1000])
        return len(keys)
    finally:
        client.close()


# -- the actor ----------------------------------------------------------------------------


@attrs.define
class _Parked:
    request: Envelope
    lease: LeaseJobs
    deadline: float  # trio time: answer empty then
    seen: int = 0  # the wake-up count when its lease was last sent
    recheck_at: float = math.inf  # trio time: a job may be due then
    leased_at: float = -math.inf  # storage time its lease last ran at

    def queues(self) -> Iterable[str]:
        return (q.name for q in self.lease.queues)


@attrs.define
class _State:
    storage: BridgedStorage
    jitter: Callable[[], float]
    parked: list[_Parked] = attrs.Factory(list)
    watchers: dict[str, set[Address]] = attrs.Factory(dict)
    pushed: dict[str, JobRecord] = attrs.Factory(dict)  # watched id -> what all watchers saw
    touched: set[str] = attrs.Factory(set)
    wakes: int = 0  # counts wake-ups: events, and local commands that make jobs ready
    woke: dict[str, int] = attrs.Factory(dict)  # queue -> the last event naming it ready
    ready_at: dict[str, float] = attrs.Factory(dict)  # queue -> storage time of that event
    woke_local: dict[str, int] = attrs.Factory(dict)  # queue -> the last local enqueue to it
    woke_all: int = 0  # the last wake-up that concerned every queue
    due: dict[str, tuple[int, float]] = attrs.Factory(dict)  # queue -> (wake-up, due at)
    unparked: dict[str, int] = attrs.Factory(dict)  # node -> the wake-up of its last Unpark
    skew: float = 0.0  # storage time minus trio time, from the latest answer
    turn: trio.Event = attrs.Factory(trio.Event)  # set once the latest batch is handled
    scope: trio.CancelScope | None = None  # the wait for the next batch

    def woken_since(self, wait: _Parked) -> bool:
        """True if jobs may have become ready for `wait` since its lease was sent.

        An event that came after the lease was sent but was published by a script that
        ran before the lease (an earlier storage time) does not count: the lease saw
        those jobs. A node's own enqueue publishes such an event right after the lease
        that took its job was sent with it, so without this every pickup leased twice.
        """
        if self.woke_all > wait.seen:
            return True
        seen, leased_at = wait.seen, wait.leased_at
        woke, ready_at, local = self.woke, self.ready_at, self.woke_local
        return any(local.get(q, 0) > seen
                   or (woke.get(q, 0) > seen and ready_at.get(q, math.inf) >= leased_at)
                   for q in wait.queues())

    def due_since(self, wait: _Parked) -> float:
        """The earliest due time (storage clock) announced since its lease was sent."""
        hints = (self.due.get(q) for q in wait.queues())
        return min((at for seq, at in filter(None, hints) if seq > wait.seen), default=math.inf)

    def park(self, wait: _Parked) -> None:
        """Park `wait`; the wait for the next batch ends in time for it."""
        self.parked.append(wait)
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, wait.deadline, wait.recheck_at)


@attrs.frozen
class _Wake:
    """Internal: events from the subscription, fed back into the inbox."""

    events: Events


async def run_redis_storage(
    ctx: ActorContext,
    *,
    storage: BridgedStorage,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with the Redis backend of `storage` (or
    any `BridgedStorage`: the PostgreSQL actor runs this shell too).

    Up to `INFLIGHT_MAX` batches are in Redis at once, so this node's work on one
    batch's answers overlaps Redis's work on the next; answers are handled in order.
    """
    world = ctx.node.world
    state = _State(storage, lambda: world.jitter(0.5, 1.5))
    state.turn.set()
    inflight = trio.Semaphore(INFLIGHT_MAX)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_events, ctx, state)
        task_status.started()
        while True:
            batch: list[Envelope] = []
            with trio.move_on_at(_next_wakeup(state)) as state.scope:
                batch = await ctx.receive_batch()
            state.scope = None
            plans = await _plan_batch(ctx, state, batch)
            if plans:
                await _acquire(inflight)
                pending = storage.aio.submit(
                    storage.backend.execute, [cmd for cmd, _ in plans], None, state.jitter())
                previous, state.turn = state.turn, trio.Event()
                nursery.start_soon(_handle, plans, pending, previous, state.turn, inflight)


async def _pump_events(ctx: ActorContext, state: _State) -> None:
    storage = state.storage
    while True:
        events = await storage.aio.call(storage.backend.next_events, state.jitter())
        await ctx.send(ctx.address, _Wake(events))


async def _acquire(semaphore: trio.Semaphore) -> None:
    # Without a checkpoint when free: a checkpoint costs a whole scheduling round,
    # milliseconds when the node's workers are busy, on every batch.
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


def _next_wakeup(state: _State) -> float:
    return min((min(p.deadline, p.recheck_at) for p in state.parked), default=math.inf)


async def _plan_batch(ctx: ActorContext, state: _State,
                      batch: list[Envelope]) -> list[tuple[Any, Handler]]:
    plans: list[tuple[Any, Handler]] = []
    for env in batch:
        await _plan(ctx, state, env, plans)
    await _plan_parked(ctx, state, plans)
    _plan_refresh(ctx, state, plans)
    return plans


async def _handle(plans: list[tuple[Any, Handler]], pending: Pending[list[Any]],
                  previous: trio.Event, mine: trio.Event, inflight: trio.Semaphore) -> None:
    try:
        results = await pending.wait()
        if not previous.is_set():
            await previous.wait()
        for (_, handler), result in zip(plans, results, strict=True):
            await handler(result)
    finally:
        mine.set()
        inflight.release()


async def _plan(ctx: ActorContext, state: _State, env: Envelope,
                plans: list[tuple[Any, Handler]]) -> None:
    msg = env.msg
    try:
        if isinstance(msg, _Wake):
            _take_events(ctx, state, msg.events)
        elif isinstance(msg, LeaseWait):
            if not isinstance(msg.lease, LeaseJobs):
                raise TypeError(f"LeaseWait.lease must be a LeaseJobs, "
                                f"got {type(msg.lease).__name__}")
            wait = _Parked(env, msg.lease, trio.current_time() + msg.wait_s, state.wakes)
            plans.append((msg.lease, functools.partial(_leased, ctx, state, wait)))
        elif isinstance(msg, WatchJobs):
            _watch(state, msg)
            plans.append((WatchRead(msg.ids), functools.partial(_watched, ctx, state, env)))
        elif isinstance(msg, UnwatchJobs):
            _unwatch(state, msg.ids, msg.watcher)
            await _respond(ctx, env, Ok())
        elif isinstance(msg, Unpark):
            await _unpark(ctx, state, msg.node)
            await _respond(ctx, env, Ok())
        else:
            if isinstance(msg, EnqueueJobs):
                _note_enqueued(state, msg)
            plans.append((msg, functools.partial(_answer, ctx, env)))
    except (ValueError, TypeError, GoTaskError) as exc:
        await _respond(ctx, env, error=exc)


def _note_enqueued(state: _State, msg: EnqueueJobs) -> None:
    """Parked leases of queues getting immediate jobs lease again right after the
    enqueue, in the same round trip; other changes wake them through events."""
    queues = {job.queue for job in msg.jobs if job.delay_s <= 0}
    if queues:
        state.wakes += 1
        for queue in queues:
            state.woke_local[queue] = state.wakes


async def _answer(ctx: ActorContext, env: Envelope, result: Any) -> None:
    if isinstance(result, Exception):
        _check_expected(result)
        await _respond(ctx, env, error=result)
    else:
        await _respond(ctx, env, result.reply if isinstance(result, Leased) else result)


def _check_expected(exc: Exception) -> None:
    """Errors a command may answer with; anything else is a bug and crashes the actor."""
    if not isinstance(exc, ValueError | TypeError | GoTaskError):
        raise exc


async def _respond(ctx: ActorContext, request: Envelope, reply: Any = None,
                   error: Exception | None = None) -> None:
    """Answer `request`: a reply that cannot be sent (too big for the wire, say) is
    answered with that error; a caller that went away is not answered."""
    try:
        try:
            if error is None:
                await ctx.reply(request, reply)
                return
        except (ValueError, TypeError, GoTaskError) as exc:
            error = exc
        await ctx.node.reply_error(request, error)
    except (trio.BrokenResourceError, LookupError):
        # A parked caller on a node that went away: its leased jobs expire and are
        # requeued by a Reaper, so dropping the reply loses nothing.
        pass


# -- parked leases ----------------------------------------------------------------------


async def _leased(ctx: ActorContext, state: _State, wait: _Parked, result: Any) -> None:
    """A `LeaseWait`'s lease came back: answer it, or park it until jobs may be due."""
    if isinstance(result, Exception):
        _check_expected(result)
        await _respond(ctx, wait.request, error=result)
        return
    assert isinstance(result, Leased)
    mono = trio.current_time()
    state.skew = result.now - mono
    wait.leased_at = result.now
    unparked = state.unparked.get(wait.lease.node, -1) > wait.seen
    if result.reply.jobs or wait.deadline <= mono or unparked:
        await _respond(ctx, wait.request, result.reply)
        return
    due = min(math.inf if result.next_due is None else result.next_due, state.due_since(wait))
    wait.recheck_at = due - state.skew
    if state.woken_since(wait):  # a wake-up came while its lease was in Redis
        wait.recheck_at = mono
    state.park(wait)


async def _plan_parked(ctx: ActorContext, state: _State,
                       plans: list[tuple[Any, Handler]]) -> None:
    """Take parked leases out: answer the timed-out ones, lease again for the woken."""
    mono = trio.current_time()
    still: list[_Parked] = []
    for wait in state.parked:
        if wait.deadline <= mono:
            await _respond(ctx, wait.request, LeaseReply(()))
        elif wait.recheck_at <= mono or state.woken_since(wait):
            wait.recheck_at, wait.seen = math.inf, state.wakes
            plans.append((wait.lease, functools.partial(_leased, ctx, state, wait)))
        else:
            still.append(wait)
    state.parked = still


async def _unpark(ctx: ActorContext, state: _State, node: str) -> None:
    # A lease of `node` still in Redis is answered, not parked, when it comes back.
    state.wakes += 1
    state.unparked[node] = state.wakes
    mine = [p for p in state.parked if p.lease.node == node]
    state.parked = [p for p in state.parked if p.lease.node != node]
    for wait in mine:
        await _respond(ctx, wait.request, LeaseReply(()))


# -- events -------------------------------------------------------------------------------


def _take_events(ctx: ActorContext, state: _State, events: Events) -> None:
    state.wakes += 1
    if events.resubscribed:
        state.woke_all = state.wakes
        state.touched.update(state.watchers)
        return
    mono = trio.current_time()
    if events.now is not None:
        state.skew = events.now - mono
    at = math.inf if events.now is None else events.now
    for queue in events.ready:
        state.woke[queue] = state.wakes
        state.ready_at[queue] = max(state.ready_at.get(queue, -math.inf), at)
    for queue, due_at in events.due:
        _note_due(state, queue, due_at, events.now)
        for wait in state.parked:
            if queue in wait.queues():
                wait.recheck_at = min(wait.recheck_at, due_at - state.skew)
    if state.watchers:
        state.touched.update(i for i in events.ids if i in state.watchers)
    _push_cancels(ctx, events)


def _note_due(state: _State, queue: str, due_at: float, now: float | None) -> None:
    """Keep per queue the earliest due time still ahead, for leases in flight."""
    _, earliest = state.due.get(queue, (0, math.inf))
    if now is not None and earliest <= now:
        earliest = math.inf
    state.due[queue] = (state.wakes, min(earliest, due_at))


def _push_cancels(ctx: ActorContext, events: Events) -> None:
    mine = tuple(LeaseToken(job_id, attempt) for job_id, node, attempt in events.cancels
                 if node == ctx.node.name)
    if mine:
        try:
            ctx.send_nowait(ctx.node.address(WORKERS), CancelRunning(mine))
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            pass  # the next heartbeat answer carries the same request


# -- watchers -----------------------------------------------------------------------------


def _watch(state: _State, msg: WatchJobs) -> None:
    """Register first: an event arriving before the read is answered is not missed."""
    for job_id in msg.ids:
        if len(state.watchers) >= WATCHERS_MAX and job_id not in state.watchers:
            raise StorageError(f"too many watched jobs (limit {WATCHERS_MAX})")
        state.watchers.setdefault(job_id, set()).add(msg.watcher)


async def _watched(ctx: ActorContext, state: _State, env: Envelope, result: Any) -> None:
    msg = env.msg
    assert isinstance(msg, WatchJobs)
    if isinstance(result, Exception):
        _check_expected(result)
        _unwatch(state, msg.ids, msg.watcher)
        await _respond(ctx, env, error=result)
        return
    assert isinstance(result, GetJobsReply)
    for job_id, job in zip(msg.ids, result.jobs, strict=True):
        if job is None or job.state in TERMINAL:
            _unwatch(state, (job_id,), msg.watcher)
        elif job_id not in state.pushed:  # later watchers may have seen newer records
            state.pushed[job_id] = job
    await _respond(ctx, env, result)


def _unwatch(state: _State, ids: Iterable[str], watcher: Address) -> None:
    for job_id in ids:
        subs = state.watchers.get(job_id)
        if subs is not None:
            subs.discard(watcher)
            if not subs:
                del state.watchers[job_id]
                state.pushed.pop(job_id, None)


def _plan_refresh(ctx: ActorContext, state: _State, plans: list[tuple[Any, Handler]]) -> None:
    ids = tuple(i for i in state.touched if i in state.watchers)
    state.touched.clear()
    if ids:
        plans.append((GetJobs(ids), functools.partial(_push_changes, ctx, state, ids)))


async def _push_changes(ctx: ActorContext, state: _State, ids: tuple[str, ...],
                        result: Any) -> None:
    if isinstance(result, Exception):
        _check_expected(result)
        state.touched.update(ids)  # look again with the next batch
        return
    for job_id, job in zip(ids, result.jobs, strict=True):
        _push_one(ctx, state, job_id, job)


def _push_one(ctx: ActorContext, state: _State, job_id: str, job: JobRecord | None) -> None:
    """Push a changed job to its watchers (not again what they all saw already)."""
    subs = state.watchers.get(job_id, set())
    if job is None or job.state in TERMINAL:
        state.watchers.pop(job_id, None)
        state.pushed.pop(job_id, None)
    elif state.pushed.get(job_id) == job:
        return
    else:
        state.pushed[job_id] = job
    if job is None:
        return
    for watcher in list(subs):
        try:
            ctx.send_nowait(watcher, JobChanged(job))
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            # A watcher that cannot keep up or went away loses its watch, never the
            # job: it can read the job's state again at any time.
            _unwatch(state, (job_id,), watcher)
