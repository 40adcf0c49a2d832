"""The actor shell around a pure storage core (the memory backend's, and simulations').

Rules of this module:
- The shell drains its inbox in batches, reads the storage clock once per batch and
  hands each command to `core.handle(cmd, now)`; the core never sees trio.
- `LeaseWait` is a lease that may wait: when nothing is due, the request is parked and
  answered as soon as a command makes jobs available, or empty after `wait_s`. This is
  the Dispatcher's wake-up: idle nodes never busy-poll.
- Watchers (`WatchJobs`) get `JobChanged` pushes for the jobs they watch after every
  batch that touched them; a watch ends by itself when its job is terminal.
- A lease reply is cut to `LEASE_REPLY_BYTES_MAX` (estimated from the jobs' arguments),
  so it fits one wire frame when the Dispatcher is on another node; the jobs cut off are
  released at once (they keep their place, and the attempt does not count).
- With `commit` (a store that commits batches, e.g. SQLite), a batch's replies and
  pushes are held until `commit()` returns: nothing is answered as stored before it
  is; if the commit fails, every request of the batch is answered with its error.
- A bad command (ValueError, StorageError), or a reply too large for the wire, is
  answered with an error; nothing is lost and the actor goes on. Any other exception
  crashes the actor, which its supervisor restarts around the same core: queue state
  lives in the core, not in the task.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import trio

from gotask._errors import GoTaskError, StorageError
from gotask._job import TERMINAL, JobRecord
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
from gotask.runtime.node import error_reply

from .base import (
    AckJobs,
    CancelJobs,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    GetJobsReply,
    LeaseJobs,
    LeaseReply,
    NackJobs,
    PromoteDue,
    ReleaseJobs,
    ReportProgress,
    RequeueExpired,
    RequeueExpiredReply,
    RetryDead,
    StorageCore,
)

__all__ = ["run_storage"]

#: Commands after which queued jobs may be available to a parked lease.
_MAKES_READY = (EnqueueJobs, NackJobs, ReleaseJobs, RequeueExpired, RetryDead, PromoteDue)
#: How often parked leases look again for jobs that became due by time alone.
RECHECK_S = 0.05
#: Budget of one lease reply, well under the wire's 1 MiB frame.
LEASE_REPLY_BYTES_MAX = 768 * 1024
#: Estimated encoded bytes of a job beside its arguments.
JOB_OVERHEAD_BYTES = 512
WATCHERS_MAX = 100_000


@attrs.define
class _Parked:
    request: Envelope
    lease: LeaseJobs
    deadline: float


@attrs.define
class _State:
    core: StorageCore
    clock: Callable[[], float]
    parked: list[_Parked] = attrs.Factory(list)
    watchers: dict[str, set[Address]] = attrs.Factory(dict)
    touched: set[str] = attrs.Factory(set)
    woke: bool = False
    checked_at: float = -math.inf


@attrs.define(eq=False)
class _Held(ActorContext):
    """The context of a batch whose replies and pushes wait for its commit."""

    replies: list[tuple[Envelope, Any]] = attrs.Factory(list)
    sends: list[tuple[Address, Any]] = attrs.Factory(list)

    async def reply(self, request: Envelope, msg: Any) -> None:
        self.replies.append((request, msg))

    def send_nowait(self, dst: Address, msg: Any) -> None:
        self.sends.append((dst, msg))


async def run_storage(
    ctx: ActorContext,
    core: StorageCore,
    *,
    clock: Callable[[], float] | None = None,
    commit: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with `core`.

    Args:
        core: the pure storage core; kept across restarts by whoever passed it.
        clock: the storage clock (seconds); the node's World wall clock by default.
        commit: ends each batch of a store with transactions; replies wait for it.
    """
    state = _State(core, clock or ctx.node.world.wall)
    task_status.started()
    while True:
        batch = await ctx.receive_until(_next_wakeup(state))
        now = state.clock()
        out = ctx if commit is None else _Held(ctx.node, ctx.address, ctx.inbox)
        for env in batch:
            await _handle(out, state, env, now)
        await _serve_parked(out, state, now)
        await _push_changes(out, state)
        if isinstance(out, _Held):
            assert commit is not None
            await _commit_then_answer(ctx, out, commit)


def _next_wakeup(state: _State) -> float:
    if not state.parked:
        return math.inf
    soonest = min(p.deadline for p in state.parked)
    return min(soonest, trio.current_time() + RECHECK_S)


async def _handle(ctx: ActorContext, state: _State, env: Envelope, now: float) -> None:
    msg = env.msg
    try:
        if isinstance(msg, LeaseWait):
            await _lease_wait(ctx, state, env, msg, now)
        elif isinstance(msg, WatchJobs):
            await ctx.reply(env, _watch(state, msg))
        elif isinstance(msg, Unpark):
            await _unpark(ctx, state, msg.node, now)
            await ctx.reply(env, Ok())
        elif isinstance(msg, UnwatchJobs):
            _unwatch(state, msg.ids, msg.watcher)
            await ctx.reply(env, Ok())
        else:
            reply = _lease(state, msg, now) if isinstance(msg, LeaseJobs) \
                else state.core.handle(msg, now)
            _note(state, msg, reply)
            await ctx.reply(env, reply)
            if isinstance(msg, CancelJobs):
                _push_cancel(ctx, state, msg.ids, now)
    except (ValueError, TypeError, GoTaskError) as exc:
        await ctx.reply(env, error_reply(exc))


async def _commit_then_answer(
    ctx: ActorContext, held: _Held, commit: Callable[[], Awaitable[None]]
) -> None:
    try:
        await commit()
    except StorageError as exc:
        failed = error_reply(exc)
        held.replies = [(request, failed) for request, _ in held.replies]
        held.sends.clear()
    for request, reply in held.replies:
        await _reply_quietly(ctx, request, reply)
    for dst, msg in held.sends:
        try:
            ctx.send_nowait(dst, msg)
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            pass  # a watcher may read the job again; a worker hears it at its heartbeat


async def _lease_wait(
    ctx: ActorContext, state: _State, env: Envelope, msg: LeaseWait, now: float
) -> None:
    lease = msg.lease
    if not isinstance(lease, LeaseJobs):
        raise TypeError(f"LeaseWait.lease must be a LeaseJobs, got {type(lease).__name__}")
    reply = _lease(state, lease, now)
    if reply.jobs or msg.wait_s <= 0:
        _note(state, lease, reply)
        await ctx.reply(env, reply)
    else:
        state.parked.append(_Parked(env, lease, trio.current_time() + msg.wait_s))


def _lease(state: _State, lease: LeaseJobs, now: float) -> LeaseReply:
    """Lease, then release what does not fit one reply's byte budget."""
    reply = state.core.handle(lease, now)
    size, keep = 0, 0
    for job in reply.jobs:
        size += len(job.args) + JOB_OVERHEAD_BYTES
        if keep and size > LEASE_REPLY_BYTES_MAX:
            break
        keep += 1
    if keep == len(reply.jobs):
        return reply
    excess = tuple(job.token for job in reply.jobs[keep:])
    state.core.handle(ReleaseJobs(excess), now)
    state.woke = True
    return LeaseReply(reply.jobs[:keep])


async def _serve_parked(ctx: ActorContext, state: _State, now: float) -> None:
    mono = trio.current_time()
    due = state.woke or mono >= state.checked_at + RECHECK_S
    if not state.parked or not (due or any(p.deadline <= mono for p in state.parked)):
        return
    state.checked_at = mono
    still: list[_Parked] = []
    for parked in state.parked:
        reply = _lease(state, parked.lease, now)
        if reply.jobs or parked.deadline <= mono:
            _note(state, parked.lease, reply)
            await _reply_quietly(ctx, parked.request, reply)
        else:
            still.append(parked)
    state.parked = still
    state.woke = False


def _push_cancel(ctx: ActorContext, state: _State, ids: tuple[str, ...], now: float) -> None:
    records = state.core.handle(GetJobs(ids), now).jobs
    for record in records:
        if record is not None and record.cancel_requested and record.lease_node:
            try:
                ctx.send_nowait(Address(record.lease_node, WORKERS),
                                CancelRunning((record.token,)))
            except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
                pass  # the next heartbeat answer carries the same request


async def _unpark(ctx: ActorContext, state: _State, node: str, now: float) -> None:
    mine = [p for p in state.parked if p.lease.node == node]
    state.parked = [p for p in state.parked if p.lease.node != node]
    for parked in mine:
        await _reply_quietly(ctx, parked.request, LeaseReply(()))


async def _reply_quietly(ctx: ActorContext, request: Envelope, reply: Any) -> None:
    # A parked caller on a node that went away: its leased jobs expire and are
    # requeued by the Reaper, so dropping the reply loses nothing.
    try:
        await ctx.reply(request, reply)
    except (trio.BrokenResourceError, LookupError):
        pass


# -- watchers ------------------------------------------------------------------------


def _watch(state: _State, msg: WatchJobs) -> GetJobsReply:
    reply = state.core.handle(GetJobs(msg.ids), state.clock())
    for job_id, record in zip(msg.ids, reply.jobs, strict=True):
        if record is not None and record.state not in TERMINAL:
            if len(state.watchers) >= WATCHERS_MAX and job_id not in state.watchers:
                raise StorageError(f"too many watched jobs (limit {WATCHERS_MAX})")
            state.watchers.setdefault(job_id, set()).add(msg.watcher)
    return reply


def _unwatch(state: _State, ids: Iterable[str], watcher: Address) -> None:
    for job_id in ids:
        subs = state.watchers.get(job_id)
        if subs is not None:
            subs.discard(watcher)
            if not subs:
                del state.watchers[job_id]


def _note(state: _State, cmd: object, reply: object) -> None:
    """Remember what a command touched: for watchers, and to wake parked leases."""
    if isinstance(cmd, _MAKES_READY):
        state.woke = True
    if state.watchers:
        state.touched.update(_touched_ids(cmd, reply))


def _touched_ids(cmd: object, reply: object) -> Iterable[str]:
    if isinstance(cmd, AckJobs | NackJobs | ReportProgress):
        return (item.job_id for item in cmd.items)
    if isinstance(cmd, ReleaseJobs):
        return (token.job_id for token in cmd.tokens)
    if isinstance(cmd, CancelJobs):
        return cmd.ids
    if isinstance(reply, LeaseReply):
        return (job.id for job in reply.jobs)
    if isinstance(reply, RequeueExpiredReply):
        return (*reply.requeued, *reply.dead, *reply.cancelled)
    if isinstance(reply, EnqueueReply):
        return reply.ids
    return ()


async def _push_changes(ctx: ActorContext, state: _State) -> None:
    ids = [job_id for job_id in state.touched if job_id in state.watchers]
    state.touched.clear()
    if not ids:
        return
    records = state.core.handle(GetJobs(tuple(ids)), state.clock()).jobs
    for job_id, record in zip(ids, records, strict=True):
        await _push_one(ctx, state, job_id, record)


async def _push_one(
    ctx: ActorContext, state: _State, job_id: str, record: JobRecord | None
) -> None:
    subs = state.watchers.get(job_id, set())
    if record is None or record.state in TERMINAL:
        state.watchers.pop(job_id, None)
    if record is None:
        return
    for watcher in list(subs):
        try:
            ctx.send_nowait(watcher, JobChanged(record))
        except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
            # A watcher that cannot keep up or went away loses its watch, never the
            # job: it can read the job's state again at any time.
            _unwatch(state, (job_id,), watcher)
