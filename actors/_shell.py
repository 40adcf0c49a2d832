"""The thin trio shell every pure actor core runs in.

Rules of this module:
- `Shell.serve(core)` is the whole receive loop: wait for messages until the core's
  `deadline()`, hand each to `core.handle(msg, now, request)`, carry out the effects in
  order, and feed `Tick(now)` whenever the deadline has passed. Time is read here, once
  per batch, from the World.
- A message outside the actor's inbox union never reaches the core: a request gets an
  `InvalidMessage` error reply, a plain send a warning.
- `Call` effects run as tasks in the actor's nursery, so a slow answer never holds up the
  inbox; each answer returns to the core as `Called` or `CallFailed`, sent to the actor's
  own inbox (one message per call, never per job). Answers to calls of an earlier life
  of the actor (before a restart) are dropped here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, assert_never

import attrs
import trio

from gotask._errors import ActorError, RemoteActorError
from gotask._job_metrics import JobMetrics, JobsEnqueued, LeasesExpired
from gotask.runtime import ActorContext, Envelope, Respond, Send

from . import _job_log
from ._effects import (
    Call,
    Called,
    CallFailed,
    CancelJob,
    Effect,
    JobEvent,
    Log,
    StartJobs,
    Stop,
    Tick,
    unknown_message,
)
from ._log_throttle import LogThrottle

__all__ = ["Core", "JobRunner", "Shell"]


class Core(Protocol):
    """What a shell needs of a pure core."""

    def deadline(self) -> float:
        """When the core next wants a `Tick` (trio clock seconds; `math.inf`: never)."""
        ...

    def handle(self, msg: Any, now: float, request: Envelope | None = None) -> list[Effect]:
        """Apply one message; return the effects to carry out."""
        ...


class JobRunner(Protocol):
    """What carries out `StartJobs` and `CancelJob` (the WorkerSupervisor's pool)."""

    def start_jobs(self, count: int) -> None:
        """Wake idle workers for `count` newly ready jobs."""
        ...

    def cancel_job(self, job_id: str, attempt: int) -> None:
        """Cancel that attempt if a worker runs it now."""
        ...


@attrs.define(eq=False)
class Shell:
    """Runs one core: `accepts` is its inbox union as a tuple of classes."""

    ctx: ActorContext
    nursery: trio.Nursery
    log: logging.Logger
    accepts: tuple[type, ...]
    #: How time is put to the core: `Tick(now)`, or a richer message of the actor's.
    make_tick: Callable[[float], Any] = Tick
    runner: JobRunner | None = None
    #: The node's job metrics, for the metric events the core returns (None: not counted).
    metrics: JobMetrics | None = None
    stopped: bool = False
    #: Bounds repeated warnings (a store that is down fails every call for a while).
    throttle: LogThrottle = attrs.Factory(LogThrottle)

    async def serve(self, core: Core) -> None:
        """Receive, handle and carry out until a `Stop` effect (or cancellation)."""
        monotonic = self.ctx.node.world.monotonic
        while not self.stopped:
            batch = await self.ctx.receive_until(core.deadline())
            now = monotonic()
            for env in batch:
                await self.carry_out(self._handle(core, env, now))
                if self.stopped:
                    return
            if core.deadline() <= now:
                await self.carry_out(core.handle(self.make_tick(now), now))

    def _log(self, level: int, text: str) -> None:
        if level >= logging.WARNING:
            line = self.throttle.admit(text, self.ctx.node.world.monotonic())
            if line is None:
                return
            text = line
        self.log.log(level, text)

    def _handle(self, core: Core, env: Envelope, now: float) -> list[Effect]:
        msg = env.msg
        if isinstance(msg, self.accepts):
            if isinstance(msg, Called | CallFailed) and msg.origin is not self:
                return []  # answers a call of this actor's earlier life
            return core.handle(msg, now, env)
        return unknown_message(self.ctx.address.name, msg, env)

    async def carry_out(self, effects: list[Effect]) -> None:
        """Carry out `effects` in order."""
        ctx = self.ctx
        for effect in effects:
            match effect:
                case Send(dst=dst, msg=msg):
                    await ctx.send(dst, msg)
                case Respond(request=request, msg=msg):
                    await ctx.reply(request, msg)
                case Call():
                    self.nursery.start_soon(self._call, effect)
                case Log(level=level, text=text):
                    self._log(level, text)
                case JobEvent():
                    _job_log.job_event(effect.event, effect.job_id, effect.task, effect.queue,
                                       effect.attempt, effect.detail)
                case JobsEnqueued() | LeasesExpired():
                    if self.metrics is not None:
                        self.metrics.observe(effect)
                case Stop():
                    self.stopped = True
                case StartJobs(count=count):
                    self._runner().start_jobs(count)
                case CancelJob(job_id=job_id, attempt=attempt):
                    self._runner().cancel_job(job_id, attempt)
                case _:
                    assert_never(effect)

    def _runner(self) -> JobRunner:
        if self.runner is None:
            raise RuntimeError(f"the {self.ctx.address.name} core asked a shell that runs "
                               "no jobs to start or cancel one")
        return self.runner

    async def _call(self, call: Call) -> None:
        ctx = self.ctx
        result: Called | CallFailed
        try:
            reply = await ctx.call(call.dst, call.msg, timeout_s=call.timeout_s)
            result = Called(call.tag, reply, self)
        except RemoteActorError as exc:
            result = CallFailed(call.tag, exc.type_name, exc.message, True, self._jitter(), self)
        except (ActorError, trio.BrokenResourceError) as exc:
            result = CallFailed(call.tag, type(exc).__name__, str(exc), False, self._jitter(),
                                self)
        await ctx.send(ctx.address, result)

    def _jitter(self) -> float:
        return self.ctx.node.world.jitter(0.5, 1.5)
