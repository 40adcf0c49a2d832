"""Group commit of concurrent enqueues: many callers, one `Enqueue` message.

Rules of this module:
- One-job enqueues without an idempotency key wait in one queue; `FLUSHERS` background
  tasks take what is queued (shared among the idle ones, up to one message's worth
  each) and send it as one `Enqueue`. A lone caller is sent at once; callers that
  arrive while a message is in flight share the next one. One frame, one Broker batch
  and one reply then serve many jobs, and each caller still gets its own id or error.
- A message the Broker refuses as invalid stored nothing (it checks every item before
  storing any), so its items are sent again one per message and each caller learns
  whether its own job was the bad one. Any other failure (connection lost, timeout, a
  storage error) reaches every caller of the message, as it would have reached each
  caller's own request: none of them is resent.
- A caller cancelled before its job was taken withdraws it; once taken, the job may be
  enqueued, as with any request cancelled in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs

from gotask._client_jobs import chunks
from gotask._errors import (
    ConnectionLost,
    InvalidArguments,
    RemoteActorError,
    RemoteProtocolError,
    TaskNotFound,
)
from gotask._protocol import IDS_MAX, JobSpec

__all__ = ["FLUSHERS", "EnqueueBatcher"]

#: Messages in flight at once: while one is at the node, the next one fills.
FLUSHERS = 2
#: Errors a Broker answers when it refused a whole message before storing anything.
_REFUSED_WHOLE = (TaskNotFound, InvalidArguments)
_REFUSED_WHOLE_REMOTE = frozenset({"ValueError", "TypeError"})

Send = Callable[[tuple[JobSpec, ...]], Awaitable[list[str]]]


@attrs.define(eq=False)
class _Pending:
    item: JobSpec
    done: anyio.Event
    job_id: str | None = None
    error: BaseException | None = None

    def finish(self, job_id: str | None, error: BaseException | None) -> None:
        self.job_id, self.error = job_id, error
        self.done.set()


def refused_whole(exc: BaseException) -> bool:
    """Whether `exc` says the Broker refused a message before storing any of it."""
    if isinstance(exc, RemoteActorError):
        return exc.type_name in _REFUSED_WHOLE_REMOTE
    return isinstance(exc, _REFUSED_WHOLE)


class EnqueueBatcher:
    """Coalesces concurrent one-job enqueues. `run` its flushers in a task group.

    Args:
        send: sends one `Enqueue` of the given items and returns their ids in order.
        jobs_max: most jobs in one `Enqueue`.
    """

    def __init__(self, send: Send, jobs_max: int = IDS_MAX) -> None:
        self._send = send
        self.jobs_max = jobs_max
        self._queue: list[_Pending] = []
        self._arrived = anyio.Event()
        self._idle = 0
        self._event: Callable[[], anyio.Event] = anyio.Event

    async def submit(self, item: JobSpec) -> str:
        """Enqueue `item` in the next message; return its job id or raise its error."""
        pending = _Pending(item, self._event())
        self._queue.append(pending)
        self._arrived.set()
        try:
            await pending.done.wait()
        finally:
            if not pending.done.is_set() and pending in self._queue:
                self._queue.remove(pending)
        if pending.error is not None:
            raise pending.error
        assert pending.job_id is not None
        return pending.job_id

    def fail_all(self, error: BaseException) -> None:
        """Fail every caller still queued (the client is closing)."""
        queued, self._queue = self._queue, []
        for pending in queued:
            pending.finish(None, error)

    async def run(self) -> None:
        """Run the flushers until cancelled."""
        # `anyio.Event()` looks up the running backend each time; this backend's event
        # class makes one directly (making events was 7% of a bench client's CPU).
        self._event = type(anyio.Event())
        async with anyio.create_task_group() as tg:
            for _ in range(FLUSHERS):
                tg.start_soon(self._flusher)

    async def _flusher(self) -> None:
        while True:
            self._idle += 1
            try:
                await self._arrived.wait()
            finally:
                self._idle -= 1
            # Share what waits with the other idle flushers, so that messages overlap
            # rather than one big message going back and forth alone.
            batch = self._take(-(-len(self._queue) // (self._idle + 1)))
            if not self._queue:
                self._arrived = anyio.Event()
            if batch:
                await self._flush(batch)

    def _take(self, share: int) -> list[_Pending]:
        if not self._queue:
            return []
        first = next(chunks([p.item for p in self._queue[:share]], self.jobs_max))
        batch, self._queue = self._queue[:len(first)], self._queue[len(first):]
        return batch

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            ids = await self._send(tuple(p.item for p in batch))
            if len(ids) != len(batch):
                raise RemoteProtocolError(f"the node answered {len(ids)} ids for "
                                          f"{len(batch)} jobs")
        except Exception as exc:
            if len(batch) > 1 and refused_whole(exc):
                async with anyio.create_task_group() as tg:
                    for pending in batch:
                        tg.start_soon(self._flush, [pending])
            else:
                for pending in batch:
                    pending.finish(None, exc)
            return
        finally:
            for pending in batch:  # cancelled: the client is closing
                if not pending.done.is_set():
                    pending.finish(None, ConnectionLost("the client closed with the "
                                                        "enqueue in flight"))
        for pending, job_id in zip(batch, ids, strict=True):
            pending.finish(job_id, None)
