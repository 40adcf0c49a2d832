"""Streams: a client-streamed enqueue, and watches that end however they end free what
they held in the node."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
import trio

from gotask._server import Server
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc

from .conftest import AUTH, call, collect
from .test_api import enqueue, json_job


def requests(n: int, per_message: int, queue: str) -> Iterator[pb.EnqueueRequest]:
    for start in range(0, n, per_message):
        yield pb.EnqueueRequest(jobs=[json_job("add", i, 1, queue=queue)
                                      for i in range(start, min(n, start + per_message))])


async def test_stream_enqueue_of_10000_jobs_is_acknowledged_in_order(
        stub: pb_grpc.GoTaskStub) -> None:
    acks = await collect(stub.EnqueueStream(requests(10_000, 1, "parked"), metadata=AUTH,
                                            timeout=120))
    assert [a.first for a in acks] == [sum(len(b.ids) for b in acks[:i])
                                       for i in range(len(acks))]
    ids = [i for a in acks for i in a.ids]
    assert len(ids) == len(set(ids)) == 10_000 and all(c for a in acks for c in a.created)
    queues = await call(stub.ListQueues, pb.ListQueuesRequest())
    assert [(q.name, dict(q.counts)) for q in queues.queues] == [("parked", {"queued": 10_000})]
    # A page holds at most 768 KiB of records (docs/protocol.md): page on by the cursor.
    args: list[int] = []
    cursor = None
    for _ in range(10):
        request = pb.ListJobsRequest(queue="parked", limit=10_000, cursor=cursor)
        page = await call(stub.ListJobs, request)
        args += (int(j.args.list_value.values[0].number_value) for j in page.jobs)
        cursor = page.cursor if page.HasField("cursor") else None
        if cursor is None:
            break
    assert sorted(args) == list(range(10_000))


async def test_stream_enqueue_stops_at_a_refused_job(stub: pb_grpc.GoTaskStub) -> None:
    def bad_third() -> Iterator[pb.EnqueueRequest]:
        yield pb.EnqueueRequest(jobs=[json_job("add", 1, 1, queue="parked")] * 2)
        yield pb.EnqueueRequest(jobs=[json_job("nope", queue="parked")])

    with pytest.raises(grpc.RpcError) as caught:
        await collect(stub.EnqueueStream(bad_third(), metadata=AUTH, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("TaskNotFound: the batch from job ")
    assert "item " in caught.value.details()
    queues = (await call(stub.ListQueues, pb.ListQueuesRequest())).queues
    assert sum(q.counts.get("queued", 0) for q in queues) in (0, 2)  # whole batches only


async def wait_idle(server: Server, baseline: list[str]) -> None:
    """Until no call runs in trio and the node has only the actors it had before."""
    with trio.fail_after(10):
        while server.grpc.statistics().running or server.node.actor_names() != baseline:
            await trio.sleep(0.02)


async def test_a_cancelled_watch_frees_its_resources(server: Server,
                                                     stub: pb_grpc.GoTaskStub) -> None:
    baseline = server.node.actor_names()
    [job_id] = await enqueue(stub, json_job("sleepy", 30))
    stream = stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=AUTH, timeout=60)
    first = await trio.to_thread.run_sync(next, stream)
    assert first.id == job_id
    assert server.grpc.statistics().running == 1
    assert any(n.startswith("grpc-watch-") for n in server.node.actor_names())
    stream.cancel()
    await wait_idle(server, baseline)
    threads = {t.name for t in threading.enumerate()}
    assert "gotask-grpc" in threads  # the face itself still serves
    assert (await call(stub.GetJob, pb.GetJobRequest(id=job_id))).state in ("queued", "active")


async def test_a_watch_past_its_deadline_ends_and_frees_its_resources(
        server: Server, stub: pb_grpc.GoTaskStub) -> None:
    baseline = server.node.actor_names()
    [job_id] = await enqueue(stub, json_job("sleepy", 30))
    with pytest.raises(grpc.RpcError) as caught:
        await collect(stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=AUTH, timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_idle(server, baseline)


async def test_many_watches_cancelled_at_once_leave_nothing(server: Server,
                                                            stub: pb_grpc.GoTaskStub) -> None:
    baseline = server.node.actor_names()
    ids = await enqueue(stub, *[json_job("sleepy", 30) for _ in range(20)])
    streams = [stub.WatchJob(pb.WatchJobRequest(id=i), metadata=AUTH, timeout=60) for i in ids]
    for stream in streams:
        await trio.to_thread.run_sync(next, stream)
    assert server.grpc.statistics().running == 20
    for stream in streams:
        stream.cancel()
    await wait_idle(server, baseline)


async def test_a_cancelled_enqueue_stream_frees_its_resources(
        server: Server, stub: pb_grpc.GoTaskStub) -> None:
    baseline = server.node.actor_names()
    more = threading.Event()

    def sends() -> Iterator[pb.EnqueueRequest]:
        yield pb.EnqueueRequest(jobs=[json_job("add", 1, 1, queue="parked")] * 3)
        more.wait(30)  # the client goes quiet with the stream open

    stream = stub.EnqueueStream(sends(), metadata=AUTH, timeout=60)
    ack = await trio.to_thread.run_sync(next, stream)
    assert (ack.first, len(ack.ids)) == (0, 3)
    stream.cancel()
    more.set()
    await wait_idle(server, baseline)
    queues = (await call(stub.ListQueues, pb.ListQueuesRequest())).queues
    assert [(q.name, dict(q.counts)) for q in queues] == [("parked", {"queued": 3})]
