"""The Broker's pure core: client requests in, storage calls and answers out.

Rules of this module:
- `BrokerCore.handle(event, now) -> list[Effect]` is the only way in. It does no IO,
  reads no clock (`now` is the caller's, in seconds), never awaits: every storage or
  dispatcher call is an effect, and its answer comes back as an event (`CallDone`,
  `CallFailed`), so any number of calls may be in flight at once.
- Enqueue: a request holds at most `batch_jobs_max` jobs; each job is checked against
  the node's `args_bytes_max` and the app (registered task, arguments that fit its
  signature; the spec's ranges were checked where it was made and decoded), task
  defaults are applied, ids come from `new_id`. All jobs taken in one inbox batch
  (until `Flush`) go to storage in as few `EnqueueJobs` as its batch limit allows; a
  request with a refused job is refused whole, naming the job, and the others proceed.
- Forwarded requests (`Forwarded`) are translated to storage commands, and storage's
  replies back into the client protocol; clients never send storage commands.
- Watches: client watchers live in a bounded `WatchBook`; the core watches jobs at
  storage on its own address and fans `JobChanged` out. A watch whose storage call
  fails is taken back, so no watcher stays registered for a watch that was refused.
- Waits: a `WaitJobs` is booked (in a `WatchBook` of its own, keyed by the wait) before
  its storage watch is answered, so a change pushed in between is not missed; it is
  answered when all its jobs are terminal or missing, or at its deadline (once storage's
  snapshot has come). At most `WAITERS_MAX` at once.
- A job nobody watches or waits for any longer is unwatched at storage.
- Any other message is refused with an error naming its type.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import TypeAlias, assert_never, cast, get_args

import attrs

from gotask import _protocol as proto
from gotask._app import App, unpack_args
from gotask._errors import (
    ActorNotFound,
    CronEntryNotFound,
    GoTaskError,
    InvalidArguments,
    RemoteProtocolError,
    ReplyTooLarge,
)
from gotask._job import ARGS_BYTES_MAX, TERMINAL, JobRecord, NewJob
from gotask._job_metrics import JobsEnqueued
from gotask._messages import JobChanged, PauseWorkers
from gotask._messages import UnwatchJobs as StorageUnwatch
from gotask._messages import WatchJobs as StorageWatch
from gotask.runtime.message import Address, Envelope, Ok

from ._broker_cron import cron_listing, run_job
from ._broker_effects import (
    Answer,
    BrokerEvent,
    Call,
    CallDone,
    CallFailed,
    Effect,
    Flush,
    Forwarded,
    Lane,
    PeerGone,
    Push,
    PushFailed,
    Received,
    Refuse,
    Target,
    Tell,
    Tick,
    client_reply,
    storage_command,
)
from ._watch import WatchBook
from .storage import base as storage_base
from .storage._reply_bytes import check_records
from .storage.base import BATCH_MAX, EnqueueJobs, EnqueueReply, GetJobsReply

__all__ = ["WAITERS_MAX", "BrokerCore", "BrokerMsg"]

WAITERS_MAX = 100_000

#: What arrives in the Broker's inbox: the client protocol and storage's pushes.
BrokerMsg: TypeAlias = proto.ClientRequest | JobChanged
_BROKER_MSGS = get_args(BrokerMsg)


@attrs.define
class _Waiter:
    request: Envelope
    ids: tuple[str, ...]
    deadline: float
    records: dict[str, JobRecord | None] = attrs.Factory(dict)
    pending: set[str] = attrs.Factory(set)
    armed: bool = False  # storage's snapshot came
    overdue: bool = False  # the deadline passed before the snapshot

    def answer(self) -> Answer | Refuse:
        jobs = tuple(self.records.get(i) for i in self.ids)
        try:
            check_records(jobs)  # records pushed since the snapshot may have grown
        except ReplyTooLarge as exc:
            return Refuse(self.request, exc)
        return Answer(self.request, proto.JobsReply(jobs))


@attrs.frozen
class _Enqueuing:
    parts: tuple[tuple[Envelope, int], ...]  # each request and how many jobs it gave
    jobs: tuple[NewJob, ...] = ()  # what went to storage, for the metric event


@attrs.frozen
class _Forwarding:
    request: Envelope


@attrs.frozen
class _Watching:
    request: Envelope
    ids: tuple[str, ...]
    watcher: Address


@attrs.frozen
class _Snapshot:
    waiter: int


@attrs.frozen
class _Pausing:
    request: Envelope


# -- cron (issue 15) --


@attrs.frozen
class _CronListing:
    request: Envelope
    states: tuple[storage_base.CronState, ...] | None = None  # set: jobs asked


@attrs.frozen
class _CronPausing:
    request: Envelope
    name: str


@attrs.frozen
class _CronRunning:
    request: Envelope


# -- queues (issue 16) --


@attrs.frozen
class _Counting:
    request: Envelope
    counts: tuple[proto.QueueCount, ...] | None = None  # set: the queue info asked


@attrs.frozen
class _QueuePausing:
    request: Envelope


_Pending: TypeAlias = (_Enqueuing | _Forwarding | _Watching | _Snapshot | _Pausing
                       | _CronListing | _CronPausing | _CronRunning | _Counting
                       | _QueuePausing)


@attrs.define
class BrokerCore:
    """The Broker's state and rules, without IO.

    Args:
        app: the tasks this node knows (for checking jobs and their defaults).
        address: the Broker's own address (storage pushes changes there).
        new_id: returns a new job id (the World's).
        has_dispatcher: whether `PauseWorkers` has a dispatcher to go to.
        book: the client watchers (bounded per watcher and overall).
        args_bytes_max: largest encoded arguments of a job (`--max-args-bytes`).
        batch_jobs_max: most jobs in one `Enqueue` (`--max-batch-jobs`).
    """

    app: App
    address: Address
    new_id: Callable[[], str]
    has_dispatcher: bool = True
    book: WatchBook[Address] = attrs.Factory(WatchBook)
    args_bytes_max: int = ARGS_BYTES_MAX
    batch_jobs_max: int = proto.IDS_MAX
    _calls: dict[int, _Pending] = attrs.Factory(dict)
    _next_key: int = 0
    _waiters: dict[int, _Waiter] = attrs.Factory(dict)
    #: The jobs each `WaitJobs` waits for, keyed by its waiter's key.
    waits: WatchBook[int] = attrs.Factory(WatchBook)
    _deadlines: list[tuple[float, int]] = attrs.Factory(list)
    _enqueues: list[tuple[Envelope, list[NewJob]]] = attrs.Factory(list)

    def handle(self, event: BrokerEvent, now: float) -> list[Effect]:
        """Apply one event at `now` (seconds, the shell's clock); return what to do."""
        match event:
            case Received(env=env):
                return self._received(env, now)
            case CallDone(key=key, reply=reply):
                return self._done(self._calls.pop(key), reply)
            case CallFailed(key=key, error=error):
                return self._failed(self._calls.pop(key), error)
            case PushFailed(watcher=watcher):
                return self._unwatch_storage(self.book.drop(watcher))
            case PeerGone(node=node):
                return self._unwatch_storage(self.book.drop_where(lambda w: w.node == node))
            case Tick():
                return self._expire(now)
            case Flush():
                return self._flush()
            case _:
                assert_never(event)

    def next_deadline(self) -> float | None:
        """When the next `Tick` is due (the earliest wait deadline), or None."""
        heap = self._deadlines
        while heap and heap[0][1] not in self._waiters:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def calls_in_flight(self) -> int:
        """Calls asked for and not answered yet."""
        return len(self._calls)

    @property
    def waiters(self) -> int:
        """`WaitJobs` requests not answered yet."""
        return len(self._waiters)

    # -- requests ------------------------------------------------------------------------

    def _received(self, env: Envelope, now: float) -> list[Effect]:
        if not isinstance(env.msg, _BROKER_MSGS):
            error = TypeError(f"the broker does not accept {type(env.msg).__name__}")
            return [Refuse(env, error)]
        msg = cast(BrokerMsg, env.msg)
        match msg:
            case proto.Enqueue(jobs=jobs):
                return self._enqueue(env, jobs)
            case JobChanged(job=job):
                return self._changed(job)
            case proto.WatchJobs(ids=ids, watcher=watcher):
                return self._watch(env, ids, watcher)
            case proto.UnwatchJobs(ids=ids, watcher=watcher):
                return [Answer(env, Ok()), *self._unwatch_storage(self.book.unwatch(ids, watcher))]
            case proto.WaitJobs(ids=ids, timeout_s=timeout_s):
                return self._wait(env, ids, now + timeout_s)
            case proto.PauseWorkers(paused=paused):
                return self._pause(env, paused)
            case (proto.GetJobs() | proto.CancelJobs() | proto.ListJobs() | proto.ListDead()
                  | proto.RetryDead() | proto.PurgeDead() | proto.ListNodes()):
                return self._forward(env, msg)
            case proto.CountQueues():
                return [self._call(_Counting(env), Target.STORAGE, storage_base.CountJobs())]
            case proto.PauseQueue(queue=queue, paused=paused):
                return [self._call(_QueuePausing(env), Target.STORAGE,
                                   storage_base.SetQueuePaused(queue, paused))]
            case proto.ListCron() | proto.PauseCron() | proto.RunCron():
                return self._cron(env, msg)
            case _:
                assert_never(msg)

    def _cron(self, env: Envelope, msg: proto.ListCron | proto.PauseCron | proto.RunCron
              ) -> list[Effect]:
        match msg:
            case proto.ListCron():
                return [self._call(_CronListing(env), Target.STORAGE, storage_base.CronList())]
            case proto.PauseCron(name=name, paused=paused):
                return [self._call(_CronPausing(env, name), Target.STORAGE,
                                   storage_base.CronSetPaused(name, paused))]
            case proto.RunCron(name=name):
                try:
                    job = run_job(self.app, name, self.new_id)
                except GoTaskError as exc:
                    return [Refuse(env, exc)]
                return [self._call(_CronRunning(env), Target.STORAGE, EnqueueJobs((job,)))]

    def _cron_done(self, pending: _CronListing | _CronPausing | _CronRunning,
                   reply: object) -> list[Effect]:
        match pending, reply:
            case _CronListing(request=env, states=None), storage_base.CronListReply(states=st):
                ids = tuple(s.last_job for s in st if s.last_job is not None)
                if not ids:
                    return [Answer(env, cron_listing(self.app, st, {}))]
                return [self._call(_CronListing(env, st), Target.STORAGE,
                                   storage_base.GetJobs(ids))]
            case _CronListing(request=env, states=tuple() as st), GetJobsReply(jobs=jobs):
                found = {job.id: job for job in jobs if job is not None}
                return [Answer(env, cron_listing(self.app, st, dict(found)))]
            case _CronPausing(request=env, name=name), storage_base.CronSetPausedReply(found=f):
                if not f:
                    return [Refuse(env, CronEntryNotFound(f"no cron entry {name!r}"))]
                return [Answer(env, Ok())]
            case _CronRunning(request=env), EnqueueReply(ids=(job_id,)):
                return [Answer(env, proto.RunCronReply(job_id))]
        return [Refuse(pending.request, _unexpected(type(pending).__name__, reply))]

    def _queues_done(self, pending: _Counting | _QueuePausing, reply: object) -> list[Effect]:
        match pending, reply:
            case _Counting(request=env, counts=None), storage_base.CountJobsReply(counts=c):
                counts = tuple(proto.QueueCount(q.queue, q.state, q.count) for q in c)
                return [self._call(_Counting(env, counts), Target.STORAGE,
                                   storage_base.QueueInfo())]
            case _Counting(request=env, counts=tuple() as counts), \
                    storage_base.QueueInfoReply(now=now, paused=paused, ready_since=ready):
                ages = tuple(proto.QueueAge(r.queue, max(0.0, now - r.since)) for r in ready)
                return [Answer(env, proto.QueuesReply(counts, paused, ages))]
            case _QueuePausing(request=env), storage_base.SetQueuePausedReply():
                return [Answer(env, Ok())]
        return [Refuse(pending.request, _unexpected(type(pending).__name__, reply))]

    def _call(self, pending: _Pending, target: Target, msg: object,
              lane: Lane = Lane.OTHER) -> Call:
        self._next_key += 1
        self._calls[self._next_key] = pending
        return Call(self._next_key, target, msg, lane)

    def _forward(self, env: Envelope, msg: Forwarded) -> list[Effect]:
        try:
            command = storage_command(msg)
        except ValueError as exc:
            return [Refuse(env, exc)]
        return [self._call(_Forwarding(env), Target.STORAGE, command)]

    def _pause(self, env: Envelope, paused: bool) -> list[Effect]:
        if not self.has_dispatcher:
            return [Refuse(env, ActorNotFound("this node runs no dispatcher to pause"))]
        return [self._call(_Pausing(env), Target.DISPATCHER, PauseWorkers(paused))]

    # -- enqueue -------------------------------------------------------------------------

    def _enqueue(self, env: Envelope, specs: tuple[proto.JobSpec, ...]) -> list[Effect]:
        if len(specs) > self.batch_jobs_max:
            return [Refuse(env, ValueError(f"an enqueue of {len(specs)} jobs; the limit is "
                                           f"{self.batch_jobs_max} (--max-batch-jobs)"))]
        jobs = []
        for index, spec in enumerate(specs):
            try:
                if len(spec.args) > self.args_bytes_max:
                    raise InvalidArguments(
                        f"arguments encode to {len(spec.args)} bytes; the limit is "
                        f"{self.args_bytes_max} (--max-args-bytes)")
                jobs.append(self._new_job(spec))
            except (GoTaskError, ValueError, TypeError) as exc:
                return [Refuse(env, type(exc)(f"item {index}: {exc}"))]
        self._enqueues.append((env, jobs))
        return []

    def _new_job(self, spec: proto.JobSpec) -> NewJob:
        """The stored job for a client's spec: task defaults applied, id from the World."""
        task = self.app.get(spec.task)
        args, kwargs = unpack_args(spec.args)
        task.bind_check(args, kwargs)
        return NewJob(
            id=self.new_id(), task=task.name,
            queue=spec.queue or task.queue,
            args=spec.args,
            priority=task.priority if spec.priority is None else spec.priority,
            delay_s=spec.delay_s,
            max_attempts=spec.max_attempts or task.max_attempts,
            timeout_s=task.timeout_s if spec.timeout_s is None else spec.timeout_s,
            result_ttl_s=task.result_ttl_s if spec.result_ttl_s is None else spec.result_ttl_s,
            idempotency_key=spec.idempotency_key,
        )

    def _flush(self) -> list[Effect]:
        """One `EnqueueJobs` per `BATCH_MAX` jobs; a request is never split."""
        effects: list[Effect] = []
        parts: list[tuple[Envelope, int]] = []
        jobs: list[NewJob] = []
        for env, batch in self._enqueues:
            if parts and len(jobs) + len(batch) > BATCH_MAX:
                effects.append(self._store(parts, jobs))
                parts, jobs = [], []
            parts.append((env, len(batch)))
            jobs.extend(batch)
        if parts:
            effects.append(self._store(parts, jobs))
        self._enqueues.clear()
        return effects

    def _store(self, parts: list[tuple[Envelope, int]], jobs: list[NewJob]) -> Call:
        stored = tuple(jobs)
        return self._call(_Enqueuing(tuple(parts), stored), Target.STORAGE,
                          EnqueueJobs(stored), Lane.ENQUEUE)

    # -- watches and waits ---------------------------------------------------------------

    def _watch(self, env: Envelope, ids: tuple[str, ...], watcher: Address) -> list[Effect]:
        try:
            self.book.watch(ids, watcher)
        except ValueError as exc:
            return [Refuse(env, exc)]
        return [self._call(_Watching(env, ids, watcher), Target.STORAGE,
                           StorageWatch(ids, self.address))]

    def _wait(self, env: Envelope, ids: tuple[str, ...], deadline: float) -> list[Effect]:
        if len(self._waiters) >= WAITERS_MAX:
            return [Refuse(env, ValueError(f"too many waiting requests (limit {WAITERS_MAX})"))]
        try:
            self.waits.watch(ids, self._next_key + 1)
        except ValueError as exc:
            return [Refuse(env, exc)]
        self._next_key += 1
        key = self._next_key
        self._calls[key] = _Snapshot(key)
        self._waiters[key] = _Waiter(env, ids, deadline, pending=set(ids))
        heapq.heappush(self._deadlines, (deadline, key))
        return [Call(key, Target.STORAGE, StorageWatch(ids, self.address))]

    def _changed(self, job: JobRecord) -> list[Effect]:
        effects: list[Effect] = []
        for key in sorted(self.waits.watchers(job.id)):
            waiter = self._waiters[key]
            waiter.records[job.id] = job
            if job.state in TERMINAL:
                waiter.pending.discard(job.id)
            if not waiter.pending:
                effects.append(self._end_wait(key))
        watchers = sorted(self.book.watchers(job.id), key=_address_key)  # a replayable order
        effects.extend(Push(w, JobChanged(job)) for w in watchers)
        if job.state in TERMINAL:
            self.book.settle(job.id)  # storage ended its own watch of the job too
        else:
            effects.extend(self._unwatch_storage([job.id]))
        return effects

    def _end_wait(self, key: int) -> Answer | Refuse:
        waiter = self._waiters.pop(key)
        self.waits.drop(key)
        return waiter.answer()

    def _expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            waiter = self._waiters.get(key)
            if waiter is None:
                continue
            if waiter.armed:
                effects.append(self._end_wait(key))
                effects.extend(self._unwatch_storage(waiter.ids))
            else:
                waiter.overdue = True  # answered when storage's snapshot comes
        return effects

    def _unwatch_storage(self, ids: Iterable[str]) -> list[Effect]:
        """Stop watching at storage the ids nobody watches or waits for any longer."""
        gone = tuple(i for i in ids if i not in self.book and i not in self.waits)
        return [Tell(Target.STORAGE, StorageUnwatch(gone, self.address))] if gone else []

    # -- answers -------------------------------------------------------------------------

    def _done(self, pending: _Pending, reply: object) -> list[Effect]:
        match pending:
            case _Enqueuing(parts=parts, jobs=jobs):
                return _split_enqueued(parts, jobs, reply)
            case _Forwarding(request=request):
                try:
                    return [Answer(request, client_reply(reply))]
                except GoTaskError as exc:
                    return [Refuse(request, exc)]
            case _Watching(request=request, ids=ids, watcher=watcher):
                return self._watched(request, ids, watcher, reply)
            case _Snapshot(waiter=key):
                return self._snapshot(key, reply)
            case _Pausing(request=request):
                return [Answer(request, Ok())]
            case _CronListing() | _CronPausing() | _CronRunning():
                return self._cron_done(pending, reply)
            case _Counting() | _QueuePausing():
                return self._queues_done(pending, reply)
            case _:
                assert_never(pending)

    def _failed(self, pending: _Pending, error: Exception) -> list[Effect]:
        match pending:
            case _Enqueuing(parts=parts):
                return [Refuse(env, error) for env, _ in parts]
            case _Forwarding(request=request) | _Pausing(request=request) \
                    | _CronListing(request=request) | _CronPausing(request=request) \
                    | _CronRunning(request=request) | _Counting(request=request) \
                    | _QueuePausing(request=request):
                return [Refuse(request, error)]
            case _Watching(request=request, ids=ids, watcher=watcher):
                return [Refuse(request, error),
                        *self._unwatch_storage(self.book.unwatch(ids, watcher))]
            case _Snapshot(waiter=key):
                if key not in self._waiters:  # answered already, by pushed changes
                    return []
                waiter = self._waiters[key]
                self._end_wait(key)
                return [Refuse(waiter.request, error), *self._unwatch_storage(waiter.ids)]
            case _:
                assert_never(pending)

    def _watched(self, request: Envelope, ids: tuple[str, ...], watcher: Address,
                 reply: object) -> list[Effect]:
        if not isinstance(reply, GetJobsReply) or len(reply.jobs) != len(ids):
            return self._failed(_Watching(request, ids, watcher),
                                _unexpected("WatchJobs", reply))
        # Storage watches no finished or missing job: neither do we.
        done = [i for i, r in zip(ids, reply.jobs, strict=True) if r is None or r.is_terminal]
        return [Answer(request, proto.JobsReply(reply.jobs)),
                *self._unwatch_storage(self.book.unwatch(done, watcher))]

    def _snapshot(self, key: int, reply: object) -> list[Effect]:
        waiter = self._waiters.get(key)
        if waiter is None:  # pushed changes answered it before the snapshot came
            return []
        if not isinstance(reply, GetJobsReply) or len(reply.jobs) != len(waiter.ids):
            return self._failed(_Snapshot(key), _unexpected("WatchJobs", reply))
        for job_id, record in zip(waiter.ids, reply.jobs, strict=True):
            if job_id not in waiter.records:  # a pushed record is newer than the snapshot
                waiter.records[job_id] = record
                if record is None or record.state in TERMINAL:
                    waiter.pending.discard(job_id)
        waiter.armed = True
        if waiter.pending and not waiter.overdue:
            return []
        return [self._end_wait(key), *self._unwatch_storage(waiter.ids)]


def _split_enqueued(parts: tuple[tuple[Envelope, int], ...], jobs: tuple[NewJob, ...],
                    reply: object) -> list[Effect]:
    total = sum(n for _, n in parts)
    if not isinstance(reply, EnqueueReply) or len(reply.ids) != total:
        return [Refuse(env, _unexpected("EnqueueJobs", reply)) for env, _ in parts]
    effects: list[Effect] = []
    start = 0
    for env, count in parts:
        end = start + count
        effects.append(Answer(env, proto.EnqueueReply(reply.ids[start:end],
                                                      reply.created[start:end])))
        start = end
    effects.append(JobsEnqueued(jobs, reply.created))
    return effects


def _address_key(address: Address) -> tuple[str, str]:
    return address.node, address.name


def _unexpected(command: str, reply: object) -> GoTaskError:
    return RemoteProtocolError(f"storage answered {command} with {type(reply).__name__}")
