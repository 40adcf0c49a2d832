"""The WorkerSupervisor's decisions, pure: which job runs next, what is cancelled, what
is stored and when, and how a drain ends. The trio shell is `worker_supervisor.py`.

Rules of this module:
- Leased jobs wait in `ready` (FIFO, as storage granted them); the shell's long-lived
  worker tasks take them with `next_job()` and `start()`, and report with `finished()`:
  plain synchronous calls, so a job costs no message and no task switch here.
- Outcomes are buffered and flushed in groups: one group takes everything buffered
  (progress first, then acks, nacks and released leases, chunked to fit a frame), its
  commands go to storage one after another, and at most `flushers` groups are at storage
  at once. When a group is stored its slots go back to the Dispatcher in one
  `SlotsFreed`. A command that fails is retried after a jittered backoff, never dropped;
  one storage rejects is logged (its leases expire and the jobs run again).
- Every `heartbeat_s` one `Heartbeat` per chunk extends every lease this node holds,
  including finished jobs whose outcome is not stored yet.
- Starts are stored in batches: every `start_report_s` while jobs run, one
  `Heartbeat(started=True)` names the jobs that started since the last one and still
  run. A job that ends sooner needs none (its ack or nack says it ran), so a drain of
  short jobs adds one small command a second, not one per job. Storage counts an
  expired lease as an attempt only when its start was stored (issue 22).
- A "stale" or "missing" heartbeat answer means another worker may own the job: it is
  cancelled here and never settled. A "cancel" answer (or `CancelRunning`) cancels it
  cooperatively and it is nacked CANCELLED. A new lease of a job this node still runs
  proves the old attempt stale.
- `Drain` pauses the Dispatcher, releases every job not started (and any lease that
  arrives later), lets running jobs finish until the grace period ends, then cancels
  the rest and releases their leases. It is answered, and the actor stops, once every
  outcome is stored, with one "released N jobs" line. A second `Drain` during a drain
  can only shorten the grace period (`Drain(0)`: cancel and release now).
- Every released lease, once stored, is a `JobEvent` ("released"): one log line per job.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, assert_never

import attrs

from gotask._app import ProcessLimits
from gotask._job import RESULT_BYTES_MAX, JobRecord, LeaseToken
from gotask._messages import CancelRunning, Drain, PauseWorkers, RunJobs, SlotsFreed
from gotask.runtime import Address, Envelope, Ok, Respond, Send

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
)
from ._worker_outcomes import cancelled, chunks
from .storage.base import (
    BATCH_MAX,
    AckItem,
    AckJobs,
    Heartbeat,
    HeartbeatReply,
    NackItem,
    NackJobs,
    ProgressItem,
    ReleaseJobs,
    ReportProgress,
    Status,
)

__all__ = ["OutcomesReady", "WorkerConfig", "WorkerCore", "WorkerMsg"]

#: Errors a storage actor answers with that mean "not now", not "never".
RETRYABLE_REMOTE = frozenset({"StorageUnavailable", "CallTimeout"})
STORE_TIMEOUT_S = 30.0


@attrs.frozen
class WorkerConfig:
    """Settings of one node's worker pool (durations in seconds)."""

    concurrency: int = 64
    threads: int = 16
    lease_timeout_s: float = 30.0
    heartbeat_s: float = 10.0
    retry_backoff_s: float = 0.5
    #: How often the starts of running jobs are stored (seconds): a lease that expires
    #: before its job's start is stored costs no attempt (a few times per job at most).
    start_report_s: float = 1.0
    #: Outcome groups at storage at once: 1 suits local memory storage; a remote
    #: store (Redis: a thread hop and a network round trip) gains from 3.
    flushers: int = 1
    #: Largest encoded result kept; a larger one fails its job (`ResultTooLarge`).
    result_bytes_max: int = RESULT_BYTES_MAX
    #: Child processes of `isolation="process"` tasks (`_worker_process`).
    processes: ProcessLimits = attrs.Factory(ProcessLimits)


@attrs.frozen
class OutcomesReady:
    """Shell -> its own core: outcomes were buffered since the last flush decision."""


#: Everything the WorkerSupervisor's inbox may hold.
WorkerMsg = RunJobs | CancelRunning | Drain | OutcomesReady | Tick | Called | CallFailed
WORKER_MSGS = (RunJobs, CancelRunning, Drain, OutcomesReady, Tick, Called, CallFailed)
Store = AckJobs | NackJobs | ReleaseJobs | ReportProgress
Settled = AckItem | NackItem | None


@attrs.define(eq=False)
class Running:
    """A leased attempt this node holds, from arrival until its outcome is decided."""

    record: JobRecord
    cancel_requested: bool = False
    stale: bool = False
    released: bool = False
    started: bool = False  # a worker runs it
    start_sent: bool = False  # its start went to storage


@attrs.frozen
class _Store:
    group: int
    cmd: Store


@attrs.frozen
class _Beat:
    tokens: tuple[LeaseToken, ...]


@attrs.frozen
class _Starts:
    tokens: tuple[LeaseToken, ...]


@attrs.define
class _Group:
    pending: deque[Store]
    freed: int


@attrs.define
class _Drain:
    requests: list[Envelope]
    grace_at: float
    paused: bool = False
    cancelled: bool = False


_PAUSE = "pause"  # the tag of the drain's PauseWorkers call


@attrs.define
class WorkerCore:
    """Bookkeeping and decisions of one node's worker pool; pure and synchronous."""

    node: str
    storage: Address
    dispatcher: Address
    config: WorkerConfig = attrs.Factory(WorkerConfig)
    ready: deque[JobRecord] = attrs.Factory(deque)
    running: dict[str, Running] = attrs.Factory(dict)
    acks: list[AckItem] = attrs.Factory(list)
    nacks: list[NackItem] = attrs.Factory(list)
    releases: list[LeaseToken] = attrs.Factory(list)
    progress: dict[str, ProgressItem] = attrs.Factory(dict)
    dropped: int = 0
    unstored: dict[tuple[str, int], None] = attrs.Factory(dict)  # (job id, attempt)
    groups: dict[int, _Group] = attrs.Factory(dict)
    next_group: int = 0
    retries: list[tuple[float, Call]] = attrs.Factory(list)
    heartbeat_at: float = -math.inf
    starts_at: float = -math.inf
    beats: int = 0  # heartbeat calls in flight
    drain: _Drain | None = None
    nudged: bool = False
    #: Task and queue of each released lease not stored yet, for its log line.
    released: dict[tuple[str, int], tuple[str, str]] = attrs.Factory(dict)
    released_total: int = 0

    # -- the shell's workers (hot path: plain calls, no messages) ---------------------

    def next_job(self) -> JobRecord | None:
        """The next job to start, or None when none is ready."""
        return self.ready.popleft() if self.ready else None

    def start(self, record: JobRecord) -> Running | NackItem | None:
        """Whether `record` runs: its `Running` to run it, a CANCELLED nack to settle at
        once (cancelled before it started), or None (stale or released: not settled)."""
        run = self.running.get(record.id)
        if run is None or run.record.attempt != record.attempt or run.stale or run.released:
            return None
        if run.cancel_requested:
            return cancelled(record)
        run.started = True
        return run

    def finished(self, record: JobRecord, item: Settled) -> bool:
        """A job ended; `item` is its outcome, None when it must not be settled.

        Returns whether the shell should wake the core (`OutcomesReady`)."""
        run = self.running.get(record.id)
        if run is not None and run.record.attempt == record.attempt:
            del self.running[record.id]
        else:
            run = None  # a newer lease of the job replaced this one
        if run is not None and run.released:
            self.releases.append(run.record.token)
            self.released[record.id, record.attempt] = (record.task, record.queue)
        elif isinstance(item, AckItem):
            self.acks.append(item)
        elif isinstance(item, NackItem):
            self.nacks.append(item)
        else:
            self.dropped += 1
            return self._nudge()
        self.unstored[record.id, record.attempt] = None
        return self._nudge()

    def reported(self, item: ProgressItem) -> bool:
        """A running job reported progress; returns whether to wake the core."""
        run = self.running.get(item.job_id)
        if run is None or run.stale or run.record.attempt != item.attempt:
            return False
        self.progress[item.job_id] = item
        return self._nudge()

    def _nudge(self) -> bool:
        if self.nudged or len(self.groups) >= self.config.flushers:
            return False
        self.nudged = True
        return True

    # -- the inbox ----------------------------------------------------------------------

    def deadline(self) -> float:
        """When the core next wants a `Tick`."""
        if self._buffered() and len(self.groups) < self.config.flushers:
            return -math.inf
        at = math.inf if self.beats else self.heartbeat_at
        if self.running:
            at = min(at, self.starts_at)
        if self.retries:
            at = min(at, min(when for when, _ in self.retries))
        if self.drain is not None and not self.drain.cancelled:
            at = min(at, self.drain.grace_at)
        return at

    def handle(self, msg: WorkerMsg, now: float, request: Envelope | None = None) -> list[Effect]:
        """Apply one message; return the effects to carry out."""
        match msg:
            case RunJobs(jobs=jobs):
                return self._add(jobs, now)
            case CancelRunning(tokens=tokens):
                return self._answers(tokens, (Status.CANCEL,) * len(tokens))
            case Drain(grace_s=grace_s):
                return self._start_drain(request, now + grace_s, now)
            case OutcomesReady():
                self.nudged = False
                return self._after(now)
            case Tick():
                return self._tick(now)
            case Called(tag=tag, reply=reply):
                return self._called(tag, reply, now)
            case CallFailed():
                return self._failed(msg, now)
            case _:
                assert_never(msg)

    def tokens(self) -> list[LeaseToken]:
        """Every lease this node holds and storage has not settled: running jobs, and
        finished ones whose outcome is not stored yet (their leases must not expire
        while the outcome waits, or the job runs again)."""
        return [r.record.token for r in self.running.values()] + [
            LeaseToken(job_id, attempt) for job_id, attempt in self.unstored]

    def _add(self, jobs: tuple[JobRecord, ...], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for job in jobs:
            older = self.running.get(job.id)
            if older is not None:  # storage leases a job again only once the old lease closed
                older.stale = True
                effects.append(CancelJob(older.record.id, older.record.attempt))
            self.running[job.id] = Running(job)
        if self.drain is None:
            self.ready.extend(jobs)
            return [*effects, StartJobs(len(jobs))]
        for job in jobs:  # draining: give every new lease back at once
            self.running[job.id].released = True
            self.finished(job, None)
        return effects + self._after(now)

    def _answers(self, tokens: tuple[LeaseToken, ...], statuses: tuple[str, ...]) -> list[Effect]:
        effects: list[Effect] = []
        for token, status in zip(tokens, statuses, strict=True):
            run = self.running.get(token.job_id)
            if run is None or run.record.attempt != token.attempt:
                continue
            if status in (Status.STALE, Status.MISSING):
                run.stale = True
            elif status == Status.CANCEL:
                run.cancel_requested = True
            else:
                continue
            effects.append(CancelJob(token.job_id, token.attempt))
        return effects

    def _tick(self, now: float) -> list[Effect]:
        self.nudged = False
        effects: list[Effect] = []
        if not self.beats and now >= self.heartbeat_at:
            effects += self._heartbeat(now)
        if now >= self.starts_at:
            effects += self._report_starts(now)
        if self.retries:
            due = [call for when, call in self.retries if when <= now]
            self.retries = [(when, call) for when, call in self.retries if when > now]
            effects += due
        drain = self.drain
        if drain is not None and not drain.cancelled and now >= drain.grace_at:
            drain.cancelled = True
            for run in self.running.values():
                run.released = True
                effects.append(CancelJob(run.record.id, run.record.attempt))
        return effects + self._after(now)

    def _heartbeat(self, now: float) -> list[Effect]:
        first = self.heartbeat_at == -math.inf
        self.heartbeat_at = now + self.config.heartbeat_s
        if first:  # the first heartbeat comes one period after start
            return []
        tokens = self.tokens()
        effects: list[Effect] = []
        for i in range(0, len(tokens), BATCH_MAX):
            chunk = tuple(tokens[i:i + BATCH_MAX])
            cmd = Heartbeat(self.node, chunk, self.config.lease_timeout_s)
            effects.append(Call(self.storage, cmd, _Beat(chunk), self.config.heartbeat_s))
        self.beats = len(effects)
        return effects

    def _report_starts(self, now: float) -> list[Effect]:
        """Store the starts of jobs that run and whose start storage does not know."""
        self.starts_at = now + self.config.start_report_s
        runs = [r for r in self.running.values()
                if r.started and not (r.start_sent or r.stale or r.released)]
        effects: list[Effect] = []
        for i in range(0, len(runs), BATCH_MAX):
            chunk = runs[i:i + BATCH_MAX]
            for run in chunk:
                run.start_sent = True
            tokens = tuple(run.record.token for run in chunk)
            cmd = Heartbeat(self.node, tokens, self.config.lease_timeout_s, started=True)
            effects.append(Call(self.storage, cmd, _Starts(tokens), self.config.heartbeat_s))
        return effects

    # -- flushing -------------------------------------------------------------------------

    def _buffered(self) -> bool:
        return bool(self.acks or self.nacks or self.releases or self.progress or self.dropped)

    def _after(self, now: float) -> list[Effect]:
        """Flush what is buffered if a group may go, then see whether a drain is done."""
        effects: list[Effect] = []
        while self._buffered() and len(self.groups) < self.config.flushers:
            effects += self._flush()
        return effects + self._drained()

    def _flush(self) -> list[Effect]:
        acks, nacks, rel, prog = self.acks, self.nacks, self.releases, self.progress
        freed = len(acks) + len(nacks) + len(rel) + self.dropped
        self.acks, self.nacks, self.releases, self.progress, self.dropped = [], [], [], {}, 0
        self.nudged = False  # outcomes from now on need a wake-up of their own
        cmds: deque[Store] = deque()
        if prog:
            cmds.append(ReportProgress(tuple(prog.values())))
        cmds.extend(chunks(acks, AckJobs) + chunks(nacks, NackJobs) + chunks(rel, ReleaseJobs))
        if not cmds:
            return [Send(self.dispatcher, SlotsFreed(freed))]
        group = self.next_group
        self.next_group += 1
        self.groups[group] = _Group(cmds, freed)
        return self._next_in(group)

    def _next_in(self, group: int) -> list[Effect]:
        pending = self.groups[group]
        if pending.pending:
            cmd = pending.pending.popleft()
            return [Call(self.storage, cmd, _Store(group, cmd), STORE_TIMEOUT_S)]
        del self.groups[group]
        return [Send(self.dispatcher, SlotsFreed(pending.freed))] if pending.freed else []

    def _stored(self, tag: _Store, now: float) -> list[Effect]:
        """Storage answered `tag.cmd`: its leases need no more heartbeats from here."""
        cmd, pop = tag.cmd, self.unstored.pop
        effects: list[Effect] = []
        if isinstance(cmd, ReleaseJobs):
            self.released_total += len(cmd.tokens)
            for token in cmd.tokens:
                pop((token.job_id, token.attempt), None)
                task, queue = self.released.pop((token.job_id, token.attempt), (None, None))
                effects.append(JobEvent("released", token.job_id, token.attempt, task, queue,
                                        "lease given back; the attempt does not count"))
        elif not isinstance(cmd, ReportProgress):
            for item in cmd.items:
                pop((item.job_id, item.attempt), None)
        if tag.group not in self.groups:
            return effects
        return effects + self._next_in(tag.group) + self._after(now)

    # -- answers ---------------------------------------------------------------------------

    def _called(self, tag: object, reply: Any, now: float) -> list[Effect]:
        match tag:
            case _Store():
                return self._stored(tag, now)
            case _Beat(tokens=tokens) | _Starts(tokens=tokens):
                self.beats = max(0, self.beats - 1) if isinstance(tag, _Beat) else self.beats
                if isinstance(reply, HeartbeatReply):
                    return self._answers(tokens, reply.statuses)
                return [Log(logging.WARNING, f"heartbeat answered with {type(reply).__name__}")]
            case "pause":
                return self._paused()
        return []  # an answer to a call of an earlier life of this actor

    def _failed(self, failed: CallFailed, now: float) -> list[Effect]:
        tag, text = failed.tag, f"{failed.error_type}: {failed.error}"
        match tag:
            case _Store(cmd=cmd):
                name = type(cmd).__name__
                if failed.remote and failed.error_type not in RETRYABLE_REMOTE:
                    return [Log(logging.ERROR, f"storage rejected {name}: {text}"),
                            *self._stored(tag, now)]
                at = now + self.config.retry_backoff_s * failed.jitter
                self.retries.append((at, Call(self.storage, cmd, tag, STORE_TIMEOUT_S)))
                return [Log(logging.WARNING, f"storing {name} failed ({text}); retrying")]
            case _Beat():
                self.beats = max(0, self.beats - 1)
                return [Log(logging.WARNING, f"heartbeat to {self.storage} failed: {text}")]
            case _Starts(tokens=tokens):
                for token in tokens:  # sent again with the next report
                    run = self.running.get(token.job_id)
                    if run is not None and run.record.attempt == token.attempt:
                        run.start_sent = False
                return [Log(logging.WARNING, f"storing job starts failed: {text}")]
            case "pause":
                return [Log(logging.WARNING, f"pausing the dispatcher failed: {text}"),
                        *self._paused()]
        return []

    # -- drain -----------------------------------------------------------------------------

    def _start_drain(self, request: Envelope | None, grace_at: float, now: float) -> list[Effect]:
        if self.drain is not None:  # a second Drain may only shorten the grace period
            self.drain.requests += [request] if request is not None else []
            self.drain.grace_at = min(self.drain.grace_at, grace_at)
            return self._tick(now)
        self.drain = _Drain([request] if request is not None else [], grace_at)
        while self.ready:
            record = self.ready.popleft()
            run = self.running.get(record.id)
            if run is not None and run.record.attempt == record.attempt:
                run.released = True
            self.finished(record, None)
        pause = Call(self.dispatcher, PauseWorkers(True), _PAUSE)
        return [pause, *self._after(now)]

    def _paused(self) -> list[Effect]:
        if self.drain is not None:
            self.drain.paused = True
        return self._drained()

    def _drained(self) -> list[Effect]:
        drain = self.drain
        if (drain is None or not drain.paused or self.running or self.ready
                or self._buffered() or self.groups or self.retries):
            return []
        self.drain = None
        done = Log(logging.INFO, f"drained: released {self.released_total} jobs")
        return [done, *(Respond(r, Ok()) for r in drain.requests), Stop()]
