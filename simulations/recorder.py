"""Recording without touching production code: a storage core proxy, a network hook and
a log handler, each turning what it sees into history events.

Rules of this module:
- `RecordingCore` is a `StorageCore`: the storage actor drives it exactly as it drives
  the memory core it wraps. Every command goes to the inner core first; the reply is
  recorded, then the storage hooks run (fault injection that must happen "between the
  commit and the reply"). Queries the harness makes go to `inner` and are not recorded.
- Only state-changing commands are recorded, one event per item, in reply order.
- The network hook records drops and duplicates; every network event also goes to the
  network listeners (fault injection on a message's way out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from gotask.actors.storage.base import (
    AckJobs,
    AckReply,
    CancelJobs,
    CancelReply,
    Command,
    CronFire,
    CronFireReply,
    CronRegister,
    CronRegisterReply,
    EnqueueJobs,
    EnqueueReply,
    Heartbeat,
    HeartbeatReply,
    LeaseJobs,
    LeaseReply,
    NackJobs,
    NackReply,
    ReleaseJobs,
    ReleaseReply,
    RequeueExpired,
    RequeueExpiredReply,
)
from gotask.actors.storage.memory import MemoryStorageCore

from .history import (
    Acked,
    Beat,
    Cancelled,
    CronFired,
    CronRegistered,
    Event,
    Expired,
    History,
    Leased,
    LogLine,
    Nacked,
    Net,
    Released,
    Stored,
)

__all__ = ["NetListener", "RecordingCore", "RecordingLog", "StorageHook", "record_net"]

R = TypeVar("R")
#: Called with every storage command and its reply, after it was recorded.
StorageHook = Callable[[Any, Any], None]
#: Called with every network event kind and its details (see `SimNetwork.on_event`).
NetListener = Callable[[str, dict[str, Any]], None]
STORE = "store"


@attrs.define(eq=False)
class RecordingCore:
    """A storage core that records every change the wrapped memory core makes."""

    inner: MemoryStorageCore
    history: History
    hooks: list[StorageHook] = attrs.Factory(list)

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply `cmd` on the inner core, record what changed, run the hooks."""
        reply = self.inner.handle(cmd, now)
        for event in _events(cmd, reply, now, trio.current_time()):
            self.history.add(event)
        for hook in tuple(self.hooks):
            hook(cmd, reply)
        return reply

    def next_due(self) -> float | None:
        """The inner core's earliest due time, so parked leases wake as in production."""
        return self.inner.next_due()


def _events(cmd: Any, reply: Any, now: float, t: float) -> list[Event]:
    match cmd, reply:
        case EnqueueJobs(), EnqueueReply():
            return [Stored(t, STORE, job_id, new.idempotency_key, new.args, now,
                           now + new.delay_s, new.max_attempts, created)
                    for new, job_id, created in zip(cmd.jobs, reply.ids, reply.created,
                                                    strict=True)]
        case LeaseJobs(), LeaseReply():
            return [Leased(t, STORE, job.id, job.attempt, cmd.node, now,
                           job.lease_expires_at or now) for job in reply.jobs]
        case Heartbeat(), HeartbeatReply():
            return [Beat(t, cmd.node, token.job_id, token.attempt, status, now,
                         reply.lease_expires_at, cmd.started)
                    for token, status in zip(cmd.tokens, reply.statuses, strict=True)]
        case AckJobs(), AckReply():
            return [Acked(t, STORE, item.job_id, item.attempt, status, now)
                    for item, status in zip(cmd.items, reply.statuses, strict=True)]
        case NackJobs(), NackReply():
            return [Nacked(t, STORE, item.job_id, item.attempt, status, item.outcome,
                           item.retry_in_s, state, now)
                    for item, status, state in zip(cmd.items, reply.statuses, reply.states,
                                                   strict=True)]
        case _:
            return _control_events(cmd, reply, now, t)


def _control_events(cmd: Any, reply: Any, now: float, t: float) -> list[Event]:
    match cmd, reply:
        case ReleaseJobs(), ReleaseReply():
            return [Released(t, STORE, token.job_id, token.attempt, status, state, now)
                    for token, status, state in zip(cmd.tokens, reply.statuses, reply.states,
                                                    strict=True)]
        case RequeueExpired(), RequeueExpiredReply():
            moved = [(i, "queued") for i in reply.requeued] + [
                (i, "dead") for i in reply.dead] + [(i, "cancelled") for i in reply.cancelled]
            return [Expired(t, STORE, job_id, state, now) for job_id, state in moved]
        case CancelJobs(), CancelReply():
            return [Cancelled(t, STORE, job_id, state, now)
                    for job_id, state in zip(cmd.ids, reply.states, strict=True)]
        case _:
            return _cron_events(cmd, reply, now, t)


def _cron_events(cmd: Any, reply: Any, now: float, t: float) -> list[Event]:
    """A registration: each entry's last fired tick. A fire: its outcome, the ticks of
    the jobs it enqueued (from their keys, `cron:NAME:TICK`), then the jobs as `Stored`
    (created when storage answered with the new job's own id, else a repeat)."""
    match cmd, reply:
        case CronRegister(), CronRegisterReply():
            return [CronRegistered(t, STORE, s.name, s.last_tick, now) for s in reply.states]
        case CronFire(), CronFireReply():
            jobs = cmd.jobs if reply.ids else ()
            ticks = tuple(int((job.idempotency_key or "").rsplit(":", 1)[-1]) for job in jobs)
            fired: list[Event] = [CronFired(t, STORE, cmd.name, cmd.expected, cmd.tick,
                                            reply.outcome, reply.last_tick, ticks, reply.ids,
                                            now)]
            return fired + [Stored(t, STORE, job_id, new.idempotency_key, new.args, now,
                                   now + new.delay_s, new.max_attempts, job_id == new.id)
                            for new, job_id in zip(jobs, reply.ids, strict=True)]
        case _:
            return []


def record_net(history: History, listeners: list[NetListener]) -> NetListener:
    """The `on_event` hook of the sim network: every event goes to `listeners` first
    (they may decide its fate), then drops and duplicates go to the history."""

    def on_event(kind: str, info: dict[str, Any]) -> None:
        for listener in tuple(listeners):
            listener(kind, info)
        if kind in ("drop", "dup"):
            history.add(Net(info["time"], info["src"], kind, info["dst"], info["type"],
                            info.get("reason", "")))

    return on_event


class RecordingLog(logging.Handler):
    """Records production log records of level ERROR and above as history events."""

    def __init__(self, history: History) -> None:
        super().__init__(logging.ERROR)
        self.history = history

    def emit(self, record: logging.LogRecord) -> None:
        try:
            t = trio.current_time()
        except RuntimeError:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" [{type(exc).__name__}: {exc}]"
        self.history.add(LogLine(t, "-", record.name, message))
