"""The history of one simulated run: every event the checker and the trace need.

Rules of this module:
- An event is a frozen value carrying the trio time it happened at and the node it
  concerns; `line()` renders it in fixed columns (time, node, event). The trace of a run
  is the sha256 of all its lines, so two runs are the same exactly when their traces are.
- Recording never awaits and never draws a random number: it cannot change the run it
  records. Listeners (fault injection) are called synchronously after an event is added.
- Storage times (`now`, `*_at` from storage) are on the storage clock; `line()` shows
  them relative to the simulation epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import attrs

from gotask.runtime.world import SIM_EPOCH_S

__all__ = [
    "Acked",
    "Beat",
    "CancelDone",
    "Cancelled",
    "CronFired",
    "CronRegistered",
    "EnqueueDone",
    "EnqueueSent",
    "Event",
    "ExecEnded",
    "ExecStarted",
    "Expired",
    "Fault",
    "History",
    "Leased",
    "LogLine",
    "Nacked",
    "Net",
    "Released",
    "Stored",
    "short",
]


def short(job_id: str | None) -> str:
    """The last 8 characters of an id: its random part, enough to tell jobs apart."""
    return "-" if job_id is None else job_id[-8:]


def _dlq(state: str) -> str:
    return "dead (DLQ)" if state == "dead" else state


def _s(at: float | None) -> str:
    return "-" if at is None else f"{at - SIM_EPOCH_S:.3f}"


@attrs.frozen
class Event:
    """Something that happened at trio time `time` on (or about) node `node`."""

    time: float
    node: str

    def text(self) -> str:
        """The event's own columns, after time and node."""
        raise NotImplementedError

    def line(self) -> str:
        """The event as one fixed-column line."""
        return f"{self.time:11.6f}  {self.node:<12.12}  {self.text()}"


@attrs.frozen
class EnqueueSent(Event):
    """A client asked a Broker to enqueue one operation's job."""

    op: str
    broker: str
    try_no: int

    def text(self) -> str:
        return f"enqueue-send           op={self.op} broker={self.broker} try={self.try_no}"


@attrs.frozen
class EnqueueDone(Event):
    """A client's enqueue call ended: "ok", "failed" (definitely refused) or
    "indeterminate" (timed out or lost: the job may or may not exist)."""

    op: str
    outcome: str
    job_id: str | None
    created: bool | None
    error: str

    def text(self) -> str:
        what = f"enqueue-{self.outcome}"
        return (f"{what:<22} op={self.op} job={short(self.job_id)} "
                f"created={self.created} {self.error}").rstrip()


@attrs.frozen
class CancelDone(Event):
    """A client's cancel call ended with the job's state after, or an error."""

    op: str
    job_id: str
    state: str

    def text(self) -> str:
        return f"cancel-call    op={self.op} job={short(self.job_id)} state={self.state}"


@attrs.frozen
class Stored(Event):
    """Storage answered one enqueued job: created, or a repeat of a known id or key."""

    job_id: str
    key: str | None
    args: bytes
    now: float
    due_at: float
    max_attempts: int
    created: bool

    def text(self) -> str:
        what = "stored" if self.created else "stored-repeat"
        return (f"{what:<14} job={short(self.job_id)} key={self.key} due={_s(self.due_at)} "
                f"max_attempts={self.max_attempts}")


@attrs.frozen
class Leased(Event):
    """Storage granted a lease: the token (job, attempt) to `holder` until `expires_at`."""

    job_id: str
    attempt: int
    holder: str
    now: float
    expires_at: float

    def text(self) -> str:
        return (f"lease          job={short(self.job_id)} attempt={self.attempt} "
                f"holder={self.holder} at={_s(self.now)} expires={_s(self.expires_at)}")


@attrs.frozen
class Beat(Event):
    """Storage answered a heartbeat of one token."""

    job_id: str
    attempt: int
    status: str
    now: float
    expires_at: float
    started: bool = False

    def text(self) -> str:
        started = " started" if self.started else ""
        return (f"heartbeat      job={short(self.job_id)} attempt={self.attempt} "
                f"{self.status}{started} expires={_s(self.expires_at)}")


@attrs.frozen
class Acked(Event):
    """Storage answered a completion (ack) of one token."""

    job_id: str
    attempt: int
    status: str
    now: float

    def text(self) -> str:
        return f"complete       job={short(self.job_id)} attempt={self.attempt} {self.status}"


@attrs.frozen
class Nacked(Event):
    """Storage answered a failure (nack) of one token; `state` is the job's state after."""

    job_id: str
    attempt: int
    status: str
    outcome: str
    retry_in_s: float | None
    state: str
    now: float

    def text(self) -> str:
        retry = "-" if self.retry_in_s is None else f"{self.retry_in_s:.3f}"
        return (f"fail           job={short(self.job_id)} attempt={self.attempt} {self.status} "
                f"outcome={self.outcome} retry_in={retry} -> {_dlq(self.state)}")


@attrs.frozen
class Released(Event):
    """Storage answered the release of one token (graceful shutdown)."""

    job_id: str
    attempt: int
    status: str
    state: str
    now: float

    def text(self) -> str:
        return (f"release        job={short(self.job_id)} attempt={self.attempt} "
                f"{self.status} -> {self.state}")


@attrs.frozen
class Expired(Event):
    """The Reaper handled an expired lease; `state` is where the job went."""

    job_id: str
    state: str
    now: float

    def text(self) -> str:
        return f"lease-expired  job={short(self.job_id)} -> {_dlq(self.state)} at={_s(self.now)}"


@attrs.frozen
class Cancelled(Event):
    """Storage answered a cancel request; `state` is the job's state after."""

    job_id: str
    state: str
    now: float

    def text(self) -> str:
        return f"cancel         job={short(self.job_id)} -> {self.state}"


@attrs.frozen
class CronRegistered(Event):
    """Storage registered a cron entry: its last fired tick after the registration."""

    name: str
    last_tick: int
    now: float

    def text(self) -> str:
        return f"cron-register  {self.name} last={_s(self.last_tick)} at={_s(self.now)}"


@attrs.frozen
class CronFired(Event):
    """Storage answered a cron fire (compare-and-set from `expected` to `tick`): the
    outcome, the last fired tick after it, and the ticks and job ids it enqueued."""

    name: str
    expected: int
    tick: int
    outcome: str
    last_tick: int | None
    ticks: tuple[int, ...]
    ids: tuple[str, ...]
    now: float

    def text(self) -> str:
        jobs = ",".join(short(i) for i in self.ids) or "-"
        return (f"cron-{self.outcome:<9} {self.name} {_s(self.expected)}->{_s(self.tick)} "
                f"ticks={len(self.ticks)} jobs={jobs} at={_s(self.now)}")


@attrs.frozen
class ExecStarted(Event):
    """A task function began: the job's attempt on `node` (incarnation `life`), with the
    arguments it received, packed again."""

    job_id: str
    attempt: int
    life: int
    args: bytes

    def text(self) -> str:
        return f"exec-start     job={short(self.job_id)} attempt={self.attempt} life={self.life}"


@attrs.frozen
class ExecEnded(Event):
    """A task function ended: "ok", "raised", or "stopped" (cancelled or killed)."""

    job_id: str
    attempt: int
    life: int
    outcome: str

    def text(self) -> str:
        return (f"exec-end       job={short(self.job_id)} attempt={self.attempt} "
                f"life={self.life} {self.outcome}")


@attrs.frozen
class Fault(Event):
    """The scenario or the harness changed the world: crash, restart, partition, heal."""

    kind: str
    detail: str = ""

    def text(self) -> str:
        return f"fault-{self.kind:<8} {self.detail}".rstrip()


@attrs.frozen
class Net(Event):
    """The simulated network dropped or duplicated a message."""

    kind: str
    dst: str
    msg_type: str
    reason: str

    def text(self) -> str:
        return f"net-{self.kind:<10} ->{self.dst} {self.msg_type} {self.reason}".rstrip()


@attrs.frozen
class LogLine(Event):
    """A production log record of level ERROR or above (an actor crash, a rejection)."""

    logger: str
    message: str

    def text(self) -> str:
        return f"log-error      {self.logger}: {self.message}"


Listener = Callable[[Event], None]


@attrs.define(eq=False)
class History:
    """Every event of one run, in the order it happened."""

    events: list[Event] = attrs.Factory(list)
    listeners: list[Listener] = attrs.Factory(list)

    def add(self, event: Event) -> None:
        """Record `event`, then tell the listeners."""
        self.events.append(event)
        for listener in tuple(self.listeners):
            listener(event)

    def lines(self) -> Iterator[str]:
        """Every event as a fixed-column line."""
        return (event.line() for event in self.events)

    def trace(self) -> str:
        """The sha256 of all lines: equal for two runs exactly when they were equal."""
        digest = hashlib.sha256()
        for line in self.lines():
            digest.update(line.encode())
            digest.update(b"\n")
        return digest.hexdigest()
