"""The Broker: the front door of a node for clients.

Rules of this module:
- Enqueue: each item is checked (registered task, msgpack `[args, kwargs]` that fit the
  task's signature, option ranges), task defaults are applied, ids come from the World.
  All items of all `Enqueue` requests drained in one batch go to storage in ONE
  `EnqueueJobs`; a request with an invalid item is refused whole, naming the item,
  and the others in the batch proceed.
- Reads and DLQ operations in `FORWARDED` go to storage unchanged; clients cannot send
  worker commands (lease, ack, nack) through the Broker.
- Waits and watches: the Broker watches the jobs at storage on its own address, fans
  the `JobChanged` pushes out to its watchers, and answers `WaitJobs` requests when
  all their jobs are terminal or their timeout passes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import attrs
import trio

from gotask._app import App, unpack_args
from gotask._errors import GoTaskError
from gotask._job import TERMINAL, JobRecord, NewJob
from gotask._messages import (
    Enqueue,
    EnqueueItem,
    JobChanged,
    PauseWorkers,
    UnwatchJobs,
    WaitJobs,
    WatchJobs,
)
from gotask.runtime import ActorContext, Address, Envelope, Ok, World

from .storage.base import (
    CancelJobs,
    CountJobs,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    GetJobsReply,
    ListDead,
    ListJobs,
    ListNodes,
    PurgeDead,
    RetryDead,
)

__all__ = ["FORWARDED", "BrokerCore", "run_broker"]

log = logging.getLogger("gotask.broker")
FORWARDED = (GetJobs, ListJobs, CountJobs, CancelJobs, ListDead, RetryDead, PurgeDead, ListNodes)
WAITERS_MAX = 100_000
WAIT_S_MAX = 3600.0
ENQUEUES_IN_FLIGHT = 4


@attrs.define
class BrokerCore:
    """Validation and the watch/wait books, pure (ids and clock come from outside)."""

    app: App
    world: World
    watchers: dict[str, set[Address]] = attrs.Factory(dict)
    waiters: dict[int, _Waiter] = attrs.Factory(dict)
    next_waiter: int = 0

    def new_job(self, index: int, item: EnqueueItem) -> NewJob:
        """Turn a client's item into a storage job, applying task defaults.

        Raises:
            TaskNotFound, InvalidArguments, ValueError: the message names the item.
        """
        try:
            task = self.app.get(item.task)
            args, kwargs = unpack_args(item.args)
            task.bind_check(args, kwargs)
            return NewJob(
                id=self.world.new_id(), task=task.name,
                queue=item.queue or task.queue,
                args=item.args,
                priority=task.priority if item.priority is None else item.priority,
                delay_s=item.delay_s,
                max_attempts=item.max_attempts or task.max_attempts,
                timeout_s=item.timeout_s if item.timeout_s is not None else task.timeout_s,
                result_ttl_s=task.result_ttl_s if item.result_ttl_s is None else item.result_ttl_s,
                idempotency_key=item.idempotency_key,
            )
        except (GoTaskError, ValueError, TypeError) as exc:
            raise type(exc)(f"item {index}: {exc}") from None

    def add_waiter(self, request: Envelope, records: tuple[JobRecord | None, ...],
                   deadline: float) -> int:
        """Book a `WaitJobs` request; returns its key."""
        if len(self.waiters) >= WAITERS_MAX:
            raise ValueError(f"too many waiting requests (limit {WAITERS_MAX})")
        self.next_waiter += 1
        pending = {r.id for r in records if r is not None and r.state not in TERMINAL}
        self.waiters[self.next_waiter] = _Waiter(request, dict(_by_id(records)), pending,
                                                 deadline)
        return self.next_waiter

    def changed(self, record: JobRecord) -> list[_Waiter]:
        """Apply a pushed change; returns the waiters it completed."""
        done = []
        for key, waiter in list(self.waiters.items()):
            if record.id in waiter.records:
                waiter.records[record.id] = record
                if record.state in TERMINAL:
                    waiter.pending.discard(record.id)
                if not waiter.pending:
                    done.append(self.waiters.pop(key))
        return done

    def expired(self, now: float) -> list[_Waiter]:
        """Waiters whose timeout passed (trio clock)."""
        keys = [k for k, w in self.waiters.items() if w.deadline <= now]
        return [self.waiters.pop(k) for k in keys]

    def next_deadline(self) -> float:
        return min((w.deadline for w in self.waiters.values()), default=math.inf)

    def interested(self, job_id: str) -> bool:
        """True while a watcher or a waiter still needs changes of this job."""
        return job_id in self.watchers or any(
            job_id in w.pending for w in self.waiters.values())


@attrs.define
class _Waiter:
    request: Envelope
    records: dict[str, JobRecord | None]
    pending: set[str]
    deadline: float

    def reply(self, ids: tuple[str, ...]) -> GetJobsReply:
        return GetJobsReply(tuple(self.records.get(i) for i in ids))


def _by_id(records: Iterable[JobRecord | None]) -> Iterable[tuple[str, JobRecord]]:
    return ((r.id, r) for r in records if r is not None)


async def run_broker(
    ctx: ActorContext,
    *,
    app: App,
    storage: Address,
    dispatcher: Address | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve client requests on this node."""
    core = BrokerCore(app, ctx.node.world)
    in_flight = trio.Semaphore(ENQUEUES_IN_FLIGHT)
    async with trio.open_nursery() as nursery:
        task_status.started()
        await _serve(ctx, core, storage, dispatcher, nursery, in_flight)


async def _serve(ctx: ActorContext, core: BrokerCore, storage: Address,
                 dispatcher: Address | None, nursery: trio.Nursery,
                 in_flight: trio.Semaphore) -> None:
    while True:
        batch = await ctx.receive_until(core.next_deadline())
        accepted = await _validate(ctx, core, [e for e in batch if isinstance(e.msg, Enqueue)])
        if accepted:
            # Several enqueue batches may be at storage at once; the limiter is the
            # backpressure when storage falls behind.
            await in_flight.acquire()
            nursery.start_soon(_store_enqueued, ctx, storage, accepted, in_flight)
        for env in batch:
            if not isinstance(env.msg, Enqueue):
                await _handle(ctx, core, storage, dispatcher, env)
        for waiter in core.expired(trio.current_time()):
            await _answer(ctx, waiter)


async def _validate(ctx: ActorContext, core: BrokerCore,
                    requests: list[Envelope]) -> list[tuple[Envelope, list[NewJob]]]:
    accepted: list[tuple[Envelope, list[NewJob]]] = []
    for env in requests:
        assert isinstance(env.msg, Enqueue)
        try:
            accepted.append((env, [core.new_job(i, it) for i, it in enumerate(env.msg.items)]))
        except (GoTaskError, ValueError, TypeError) as exc:
            await ctx.node.reply_error(env, exc)
    return accepted


async def _store_enqueued(ctx: ActorContext, storage: Address,
                          accepted: list[tuple[Envelope, list[NewJob]]],
                          in_flight: trio.Semaphore) -> None:
    try:
        jobs = tuple(job for _, batch in accepted for job in batch)
        try:
            reply = await ctx.call(storage, EnqueueJobs(jobs))
        except GoTaskError as exc:
            for env, _ in accepted:
                await ctx.node.reply_error(env, exc)
            return
        assert isinstance(reply, EnqueueReply)
        start = 0
        for env, batch in accepted:
            end = start + len(batch)
            await ctx.reply(env, EnqueueReply(reply.ids[start:end], reply.created[start:end]))
            start = end
    finally:
        in_flight.release()


async def _handle(ctx: ActorContext, core: BrokerCore, storage: Address,
                  dispatcher: Address | None, env: Envelope) -> None:
    msg = env.msg
    try:
        match msg:
            case JobChanged(job=record):
                await _changed(ctx, core, storage, record)
            case WatchJobs(ids=ids, watcher=watcher):
                for job_id in ids:
                    core.watchers.setdefault(job_id, set()).add(watcher)
                await ctx.reply(env, await _watch(ctx, storage, ids))
            case UnwatchJobs(ids=ids, watcher=watcher):
                await _unwatch(ctx, core, storage, ids, watcher)
                await ctx.reply(env, Ok())
            case WaitJobs():
                await _wait(ctx, core, storage, env, msg)
            case PauseWorkers() if dispatcher is not None:
                await ctx.reply(env, await ctx.call(dispatcher, msg))
            case _ if isinstance(msg, FORWARDED):
                await ctx.reply(env, await ctx.call(storage, msg))
            case _:
                raise TypeError(f"the broker does not accept {type(msg).__name__}")
    except (GoTaskError, ValueError, TypeError) as exc:
        await ctx.node.reply_error(env, exc)


async def _watch(ctx: ActorContext, storage: Address, ids: tuple[str, ...]) -> GetJobsReply:
    reply = await ctx.call(storage, WatchJobs(ids, ctx.address))
    assert isinstance(reply, GetJobsReply)
    return reply


async def _wait(ctx: ActorContext, core: BrokerCore, storage: Address, env: Envelope,
                msg: WaitJobs) -> None:
    if not 0 <= msg.timeout_s <= WAIT_S_MAX:
        raise ValueError(f"timeout_s must be between 0 and {WAIT_S_MAX:g}, got {msg.timeout_s}")
    current = await _watch(ctx, storage, msg.ids)
    key = core.add_waiter(env, current.jobs, trio.current_time() + msg.timeout_s)
    if not core.waiters[key].pending:
        await _answer(ctx, core.waiters.pop(key))


async def _answer(ctx: ActorContext, waiter: _Waiter) -> None:
    msg = waiter.request.msg
    assert isinstance(msg, WaitJobs)
    try:
        await ctx.reply(waiter.request, waiter.reply(msg.ids))
    except (trio.BrokenResourceError, LookupError):
        log.info("waiting client went away before its answer")


async def _changed(ctx: ActorContext, core: BrokerCore, storage: Address,
                   record: JobRecord) -> None:
    for waiter in core.changed(record):
        await _answer(ctx, waiter)
    for watcher in list(core.watchers.get(record.id, ())):
        try:
            ctx.send_nowait(watcher, JobChanged(record))
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            core.watchers[record.id].discard(watcher)
    if record.state in TERMINAL:
        core.watchers.pop(record.id, None)
    elif not core.interested(record.id):
        try:
            ctx.send_nowait(storage, UnwatchJobs((record.id,), ctx.address))
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            log.debug("unwatch of %s deferred: storage busy", record.id)


async def _unwatch(ctx: ActorContext, core: BrokerCore, storage: Address,
                   ids: tuple[str, ...], watcher: Address) -> None:
    for job_id in ids:
        subs = core.watchers.get(job_id)
        if subs is not None:
            subs.discard(watcher)
            if not subs:
                del core.watchers[job_id]
    gone = tuple(i for i in ids if not core.interested(i))
    if gone:
        await ctx.call(storage, UnwatchJobs(gone, ctx.address))
