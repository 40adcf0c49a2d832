"""The Broker: the front door of a node for clients, a thin shell around `BrokerCore`.

Rules of this module:
- The shell only receives, calls the core and carries out its effects
  (`actors._broker_effects`). It takes everything ready in the inbox, feeds each message
  to the core, then `Flush` (the batch's enqueues go to storage together) and `Tick`
  (due waits are answered).
- No call is awaited in the receive loop: each runs in a task of its own and its answer
  goes back to the core as an event, so one slow read never holds up the enqueues
  behind it. Calls in flight are bounded per lane (`ENQUEUES_IN_FLIGHT`,
  `CALLS_IN_FLIGHT`); a full lane holds the loop, which is the backpressure.
- A push a watcher cannot take at once drops that watcher (the client watches again);
  an unwatch waits for room in storage's inbox, like any send.
- The functions `enqueue`, `get_jobs`, `wait_jobs` and `cancel_jobs` are the typed
  way for code on a node (simulations, tests) to ask a Broker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import assert_never

import attrs
import trio

from gotask import _protocol as proto
from gotask._app import App
from gotask._errors import GoTaskError, LocalProtocolError
from gotask._job import ARGS_BYTES_MAX, JobRecord
from gotask._job_metrics import JobMetrics, JobsEnqueued
from gotask._messages import BROKER, JobChanged
from gotask.runtime import ActorContext, Address, Envelope, Node, error_reply

from ._broker_core import BrokerCore
from ._broker_effects import (
    Answer,
    Call,
    CallDone,
    CallFailed,
    Effect,
    Flush,
    Lane,
    PeerGone,
    Push,
    PushFailed,
    Received,
    Refuse,
    Target,
    Tell,
    Tick,
)

__all__ = [
    "CALLS_IN_FLIGHT",
    "ENQUEUES_IN_FLIGHT",
    "BrokerCore",
    "cancel_jobs",
    "enqueue",
    "get_jobs",
    "run_broker",
    "wait_jobs",
]

log = logging.getLogger("gotask.broker")
#: `EnqueueJobs` calls at storage at once; more enqueues wait and go in bigger batches.
ENQUEUES_IN_FLIGHT = 4
#: Other calls (reads, watches, DLQ, pause) at once.
CALLS_IN_FLIGHT = 32
_CALL_ERRORS = (GoTaskError, trio.BrokenResourceError, trio.ClosedResourceError)
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, LookupError)


async def run_broker(
    ctx: ActorContext,
    *,
    app: App,
    storage: Address,
    dispatcher: Address | None = None,
    args_bytes_max: int = ARGS_BYTES_MAX,
    batch_jobs_max: int = proto.IDS_MAX,
    metrics: JobMetrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve client requests on this node (limits: see `BrokerCore`; `metrics` counts the
    jobs it stored)."""
    core = BrokerCore(app, ctx.address, ctx.node.world.new_id,
                      has_dispatcher=dispatcher is not None, args_bytes_max=args_bytes_max,
                      batch_jobs_max=batch_jobs_max)
    async with trio.open_nursery() as nursery:
        shell = _Shell(ctx, core, {Target.STORAGE: storage, Target.DISPATCHER: dispatcher},
                       nursery, metrics)
        unsubscribe = ctx.node.on_peer_lost(shell.peer_lost)
        task_status.started()
        try:
            await shell.serve()
        finally:
            unsubscribe()


@attrs.define(eq=False)
class _Shell:
    ctx: ActorContext
    core: BrokerCore
    targets: dict[Target, Address | None]
    nursery: trio.Nursery
    metrics: JobMetrics | None = None
    lanes: dict[Lane, trio.Semaphore] = attrs.Factory(lambda: {
        Lane.ENQUEUE: trio.Semaphore(ENQUEUES_IN_FLIGHT),
        Lane.OTHER: trio.Semaphore(CALLS_IN_FLIGHT),
    })

    async def serve(self) -> None:
        handle = self.core.handle
        while True:
            deadline = self.core.next_deadline()
            batch = await self.ctx.receive_until(math.inf if deadline is None else deadline)
            for env in batch:
                await self.carry_out(handle(Received(env), trio.current_time()))
            await self.carry_out(handle(Flush(), trio.current_time()))
            await self.carry_out(handle(Tick(), trio.current_time()))

    async def carry_out(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            match effect:
                case Answer(request=request, msg=msg):
                    await self._reply(request, msg)
                case Refuse(request=request, error=error):
                    await self._reply(request, error_reply(error))
                case Push(watcher=watcher, msg=msg):
                    await self._push(watcher, msg)
                case Call():
                    lane = self.lanes[effect.lane]
                    await lane.acquire()
                    self.nursery.start_soon(self._call, effect, lane)
                case Tell(target=target, msg=msg):
                    await self._tell(target, msg)
                case JobsEnqueued():
                    if self.metrics is not None:
                        self.metrics.observe(effect)
                case _:
                    assert_never(effect)

    async def _reply(self, request: Envelope, msg: object) -> None:
        try:
            await self.ctx.reply(request, msg)
        except _GONE:
            log.info("a client went away before its answer")

    async def _push(self, watcher: Address, msg: JobChanged) -> None:
        try:
            self.ctx.send_nowait(watcher, msg)
        except (trio.WouldBlock, LocalProtocolError, *_GONE):  # too big for the wire, say
            await self.carry_out(self.core.handle(PushFailed(watcher), trio.current_time()))

    def peer_lost(self, node: str) -> None:
        """The node's last link to `node` closed: drop that node's watchers."""
        self.nursery.start_soon(self._carry_event, PeerGone(node))

    async def _carry_event(self, event: PeerGone) -> None:
        await self.carry_out(self.core.handle(event, trio.current_time()))

    async def _call(self, call: Call, lane: trio.Semaphore) -> None:
        dst = self.targets[call.target]
        try:
            if dst is None:
                raise LookupError(f"this node runs no {call.target.value}")
            event: CallDone | CallFailed = CallDone(call.key, await self.ctx.call(dst, call.msg))
        except (*_CALL_ERRORS, LookupError) as exc:
            event = CallFailed(call.key, exc)
        finally:
            lane.release()
        await self.carry_out(self.core.handle(event, trio.current_time()))

    async def _tell(self, target: Target, msg: object) -> None:
        dst = self.targets[target]
        if dst is None:
            return
        try:
            await self.ctx.send(dst, msg)  # a full inbox holds us: backpressure
        except _GONE as exc:
            log.info("%s not sent to %s: %s", type(msg).__name__, dst, exc)


# -- asking a Broker -----------------------------------------------------------------------


async def enqueue(node: Node, at: str, jobs: Sequence[proto.JobSpec], *,
                  timeout_s: float = 10.0) -> proto.EnqueueReply:
    """Enqueue `jobs` through the Broker of node `at`; see `proto.Enqueue`."""
    return await node.call(Address(at, BROKER), proto.Enqueue(tuple(jobs)), timeout_s=timeout_s)


async def get_jobs(node: Node, at: str, ids: Sequence[str], *,
                   timeout_s: float = 10.0) -> tuple[JobRecord | None, ...]:
    """The records of `ids` (None: no such job), through the Broker of node `at`."""
    reply = await node.call(Address(at, BROKER), proto.GetJobs(tuple(ids)), timeout_s=timeout_s)
    return reply.jobs


async def wait_jobs(node: Node, at: str, ids: Sequence[str], wait_s: float, *,
                    timeout_s: float | None = None) -> tuple[JobRecord | None, ...]:
    """The records of `ids` once all are terminal, or after `wait_s` seconds."""
    msg = proto.WaitJobs(tuple(ids), wait_s)
    call_s = wait_s + 10.0 if timeout_s is None else timeout_s
    return (await node.call(Address(at, BROKER), msg, timeout_s=call_s)).jobs


async def cancel_jobs(node: Node, at: str, ids: Sequence[str], *,
                      timeout_s: float = 10.0) -> tuple[str, ...]:
    """Cancel `ids` through the Broker of node `at`; their states after."""
    msg = proto.CancelJobs(tuple(ids))
    return (await node.call(Address(at, BROKER), msg, timeout_s=timeout_s)).states
