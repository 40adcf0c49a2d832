"""The gRPC API (`gotask.v1.GoTask`): the client protocol over gRPC.

Rules of this module:
- `GoTaskService` runs in the gRPC server's asyncio loop. Every method builds requests
  of `gotask._protocol` and has `NodeCalls` send them to the node's Broker in trio,
  through the `Bridge`; it never touches storage or an actor's state.
- Deadlines are honoured: a call gets the time its client has left (at most
  `CALL_TIMEOUT_S`), and a call whose client went away or ran out of time is cancelled
  in trio too.
- A bad request gets INVALID_ARGUMENT (or the code of its problem type, see
  `web._grpc_values`) and changes nothing.
- `EnqueueStream` enqueues what arrived while the previous batch was stored, 1-`IDS_MAX`
  jobs per batch, one batch at a time and in order, and acknowledges each batch: a
  refused batch ends the call, and no job sent after it is enqueued.
- `WatchJob` watches on an inbox of its own (`grpc-watch-<id>`), closed and unwatched
  when the stream ends however it ends.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

import attrs
import grpc
import trio

from gotask._client_jobs import WATCH_REFRESH_S
from gotask._errors import CallTimeout, JobNotFound
from gotask._job import STORED_STATES, JobRecord
from gotask._protocol import (
    IDS_MAX,
    CancelJobs,
    CountQueues,
    Enqueue,
    GetJobs,
    JobChanged,
    ListDead,
    ListJobs,
    ListNodes,
    PurgeDead,
    RetryDead,
    UnwatchJobs,
    WatchJobs,
)
from gotask.runtime import Address, Node
from gotask.runtime.message import Command
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc
from gotask.web._grpc_bridge import Bridge, Emit
from gotask.web._grpc_values import (
    job_message,
    nodes_message,
    page_message,
    queues_message,
    spec_of,
    status_of,
)

__all__ = ["CALL_TIMEOUT_S", "GoTaskService", "NodeCalls"]

#: Longest a call waits for the Broker, in seconds (less when the client's deadline is nearer).
CALL_TIMEOUT_S: Final = 30.0
#: Capacity of one watch's inbox; a watch that falls behind is dropped and asks again.
WATCH_INBOX_MAX: Final = 64
F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class NodeCalls:
    """What the service does in trio: calls to the Broker and watches."""

    node: Node
    broker: Address

    async def call(self, cmd: Command[Any], timeout_s: float) -> Any:
        """Send one request to the Broker and return its reply."""
        return await self.node.call(self.broker, cmd, timeout_s=timeout_s)

    async def watch(self, emit: Emit, job_id: str) -> None:
        """Emit the job's record now and on every change until it is terminal.

        Raises:
            JobNotFound: there is no such job.
        """
        name = f"grpc-watch-{self.node.world.new_id()}"
        inbox = self.node.open_inbox(name, WATCH_INBOX_MAX)
        me = self.node.address(name)
        job: JobRecord | None = None
        try:
            while job is None or not job.is_terminal:
                # (Again) after a quiet spell: a push may have been lost to a full inbox.
                job = (await self.call(WatchJobs((job_id,), me), CALL_TIMEOUT_S)).jobs[0]
                if job is None:
                    raise JobNotFound(f"no job {job_id}")
                emit(job)
                with trio.move_on_after(WATCH_REFRESH_S):
                    while not job.is_terminal:
                        msg = (await inbox.receive()).msg
                        if isinstance(msg, JobChanged):
                            job = msg.job
                            emit(job)
        finally:
            self.node.close_inbox(name)
            if job is not None and not job.is_terminal:
                await self._unwatch(job_id, me)

    async def _unwatch(self, job_id: str, me: Address) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.call(UnwatchJobs((job_id,), me), 5)
            except Exception:  # the Broker drops a gone watcher on its first push anyway
                pass


def _guarded(method: F) -> F:
    """Turn a failure into its status code (see `web._grpc_values.status_of`)."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                await _abort(context, exc)
        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(context, exc)
    return unary  # type: ignore[return-value]


class _InBatch(Exception):
    """A stream's batch was refused; `first` is the index of its first job in the stream."""

    def __init__(self, error: Exception, first: int) -> None:
        super().__init__(error)
        self.error, self.first = error, first


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, _InBatch):  # the Broker counts items from the batch's start
        code, message, kind = status_of(exc.error, f"the batch from job {exc.first}: ")
    else:
        code, message, kind = status_of(exc)
    context.set_trailing_metadata((("gotask-error", kind),))
    await context.abort(code, message)


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    left = context.time_remaining()
    if left is None:
        return CALL_TIMEOUT_S
    if left <= 0:
        raise CallTimeout("the call's deadline passed before it reached the node")
    return min(left, CALL_TIMEOUT_S)


def _id(value: str, what: str = "id") -> str:
    if not value:
        raise ValueError(f"{what} is required")
    return value


def _limit(value: int) -> int:
    return value or 100


class GoTaskService(pb_grpc.GoTaskServicer):
    """The methods of `gotask.v1.GoTask`; see the module rules."""

    def __init__(self, bridge: Bridge, calls: NodeCalls) -> None:
        self._bridge = bridge
        self._calls = calls

    async def _call(self, cmd: Command[Any], context: Any) -> Any:
        return await self._bridge.run(self._calls.call, cmd, _timeout(context))

    @_guarded
    async def Enqueue(self, request: pb.EnqueueRequest, context: Any) -> pb.EnqueueResponse:
        if not 1 <= len(request.jobs) <= IDS_MAX:
            raise ValueError(f"a request carries 1-{IDS_MAX} jobs, got {len(request.jobs)}")
        specs = tuple(spec_of(j, f"jobs[{i}].") for i, j in enumerate(request.jobs))
        reply = await self._call(Enqueue(specs), context)
        return pb.EnqueueResponse(ids=reply.ids, created=reply.created)

    @_guarded
    async def EnqueueStream(self, requests: AsyncIterator[pb.EnqueueRequest],
                            context: Any) -> AsyncIterator[pb.EnqueueAck]:
        arrived: asyncio.Queue[pb.JobSpec | None] = asyncio.Queue(IDS_MAX)
        reader = asyncio.ensure_future(_read_jobs(requests, arrived))
        try:
            first = 0
            while batch := await _next_batch(arrived):
                specs = tuple(spec_of(j, f"job {first + i}: ") for i, j in enumerate(batch))
                try:
                    reply = await self._call(Enqueue(specs), context)
                except Exception as exc:
                    raise _InBatch(exc, first) from None
                yield pb.EnqueueAck(first=first, ids=reply.ids, created=reply.created)
                first += len(batch)
            await reader
        finally:
            reader.cancel()

    @_guarded
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.Job:
        job = (await self._call(GetJobs((_id(request.id),)), context)).jobs[0]
        if job is None:
            raise JobNotFound(f"no job {request.id}")
        return job_message(job)

    @_guarded
    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.Job]:
        async for job in self._bridge.stream(self._calls.watch, _id(request.id)):
            yield job_message(job)

    @_guarded
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any
                        ) -> pb.CancelJobResponse:
        state = (await self._call(CancelJobs((_id(request.id),)), context)).states[0]
        if state == "missing":
            raise JobNotFound(f"no job {request.id}")
        return pb.CancelJobResponse(id=request.id, state=state)

    @_guarded
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.JobPage:
        state = request.state if request.HasField("state") else None
        if state is not None and state not in STORED_STATES:
            raise ValueError(f"state must be one of {', '.join(sorted(STORED_STATES))}")
        cmd = ListJobs(request.queue if request.HasField("queue") else None, state,
                       _limit(request.limit),
                       request.cursor if request.HasField("cursor") else None)
        return page_message(await self._call(cmd, context))

    @_guarded
    async def ListQueues(self, request: pb.ListQueuesRequest, context: Any
                         ) -> pb.ListQueuesResponse:
        return queues_message(await self._call(CountQueues(), context))

    @_guarded
    async def ListDead(self, request: pb.ListDeadRequest, context: Any) -> pb.JobPage:
        cmd = ListDead(request.queue if request.HasField("queue") else None,
                       _limit(request.limit),
                       request.cursor if request.HasField("cursor") else None)
        return page_message(await self._call(cmd, context))

    @_guarded
    async def RetryDead(self, request: pb.DeadJobsRequest, context: Any) -> pb.CountResponse:
        ids = tuple(_id(i, "each id") for i in request.ids) or None
        return pb.CountResponse(count=(await self._call(RetryDead(ids), context)).count)

    @_guarded
    async def PurgeDead(self, request: pb.DeadJobsRequest, context: Any) -> pb.CountResponse:
        ids = tuple(_id(i, "each id") for i in request.ids) or None
        return pb.CountResponse(count=(await self._call(PurgeDead(ids), context)).count)

    @_guarded
    async def ListNodes(self, request: pb.ListNodesRequest, context: Any
                        ) -> pb.ListNodesResponse:
        return nodes_message((await self._call(ListNodes(), context)).nodes)


async def _read_jobs(requests: AsyncIterator[pb.EnqueueRequest],
                     arrived: asyncio.Queue[pb.JobSpec | None]) -> None:
    async for request in requests:
        for job in request.jobs:
            await arrived.put(job)
    await arrived.put(None)


async def _next_batch(arrived: asyncio.Queue[pb.JobSpec | None]) -> list[pb.JobSpec]:
    """The jobs that arrived (at least one, at most IDS_MAX); empty at the stream's end."""
    job = await arrived.get()
    batch: list[pb.JobSpec] = []
    while job is not None:
        batch.append(job)
        if len(batch) == IDS_MAX or arrived.empty():
            return batch
        job = arrived.get_nowait()
    if batch:
        arrived.put_nowait(None)  # the end, for the next call
    return batch
