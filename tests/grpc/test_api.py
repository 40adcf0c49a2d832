"""Every method of `gotask.v1.GoTask` through a real grpcio client over a real socket."""

from __future__ import annotations

from typing import Any

import grpc
import msgpack
import pytest
from google.protobuf import json_format, struct_pb2

from gotask._app import pack_args
from gotask._server import Server
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc

from .conftest import AUTH, call, collect


def json_job(task: str, *args: Any, **options: Any) -> pb.JobSpec:
    """A job whose arguments travel as JSON values."""
    values = struct_pb2.ListValue()
    values.extend(args)
    return pb.JobSpec(task=task, arguments_json=pb.JsonArguments(args=values), **options)


async def enqueue(stub: pb_grpc.GoTaskStub, *jobs: pb.JobSpec) -> list[str]:
    reply = await call(stub.Enqueue, pb.EnqueueRequest(jobs=jobs))
    return list(reply.ids)


async def finished(stub: pb_grpc.GoTaskStub, job_id: str) -> pb.Job:
    """The job's last record, read through WatchJob."""
    records = await collect(stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=AUTH,
                                          timeout=30))
    return records[-1]


async def test_enqueue_json_arguments_reach_the_task_as_ints(stub: pb_grpc.GoTaskStub) -> None:
    [job_id] = await enqueue(stub, json_job("add", 2, 3))
    job = await finished(stub, job_id)
    assert job.state == "succeeded"
    assert json_format.MessageToDict(job.result) == 5
    assert msgpack.unpackb(job.result_msgpack) == 5  # an int, not 5.0
    assert json_format.MessageToDict(job.args) == [2, 3]


async def test_enqueue_msgpack_arguments_pass_byte_identical(stub: pb_grpc.GoTaskStub) -> None:
    data = pack_args([40, 2])
    [job_id] = await enqueue(stub, pb.JobSpec(task="add", arguments_msgpack=data))
    job = await finished(stub, job_id)
    assert job.arguments_msgpack == data
    assert msgpack.unpackb(job.result_msgpack) == 42


async def test_enqueue_options_and_idempotency(stub: pb_grpc.GoTaskStub) -> None:
    spec = json_job("add", 1, 1, queue="elsewhere", priority=7, delay_s=60.0,
                    max_attempts=3, idempotency_key="k-1")
    reply = await call(stub.Enqueue, pb.EnqueueRequest(jobs=[spec, spec]))
    assert reply.ids[0] == reply.ids[1] and list(reply.created) == [True, False]
    job = await call(stub.GetJob, pb.GetJobRequest(id=reply.ids[0]))
    assert (job.queue, job.priority, job.state, job.max_attempts, job.idempotency_key) == (
        "elsewhere", 7, "scheduled", 3, "k-1")
    assert job.due_at - job.created_at == pytest.approx(60.0, abs=1)


@pytest.mark.parametrize(("request_", "name"), [
    (pb.EnqueueRequest(jobs=[]), "ValueError"),
    (pb.EnqueueRequest(jobs=[pb.JobSpec(task="nope")]), "TaskNotFound"),
    (pb.EnqueueRequest(jobs=[pb.JobSpec(task="add", arguments_msgpack=b"\xc1")]),
     "InvalidArguments"),
    (pb.EnqueueRequest(jobs=[pb.JobSpec(task="add", arguments_msgpack=b"\x91\x90")]),
     "InvalidArguments"),
    (pb.EnqueueRequest(jobs=[json_job("add", 1, 2, max_attempts=0)]), "ValueError"),
    (pb.EnqueueRequest(jobs=[json_job("add", 1, 2, queue="")]), "ValueError"),
    (pb.EnqueueRequest(jobs=[json_job("add", 1, 2), json_job("add", 1, 2, delay_s=-1)]),
     "ValueError"),
])
async def test_enqueue_refuses_bad_jobs_and_enqueues_none(
        stub: pb_grpc.GoTaskStub, request_: pb.EnqueueRequest, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await call(stub.Enqueue, request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{name}: ")
    assert ("gotask-error", f"urn:gotask:error:{name}") in caught.value.trailing_metadata()
    assert (await call(stub.ListQueues, pb.ListQueuesRequest())).queues == []


async def test_the_index_of_a_refused_job_is_named(stub: pb_grpc.GoTaskStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await enqueue(stub, json_job("add", 1, 2), json_job("add", 1, 2, max_attempts=0))
    assert "jobs[1]." in caught.value.details()


@pytest.mark.parametrize("method", ["GetJob", "CancelJob", "WatchJob"])
async def test_a_missing_job_is_not_found(stub: pb_grpc.GoTaskStub, method: str) -> None:
    request = {"GetJob": pb.GetJobRequest, "CancelJob": pb.CancelJobRequest,
               "WatchJob": pb.WatchJobRequest}[method](id="01NOSUCHJOB")
    with pytest.raises(grpc.RpcError) as caught:
        if method == "WatchJob":
            await collect(stub.WatchJob(request, metadata=AUTH, timeout=10))
        else:
            await call(getattr(stub, method), request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "JobNotFound: no job 01NOSUCHJOB"


async def test_an_empty_id_is_invalid(stub: pb_grpc.GoTaskStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await call(stub.GetJob, pb.GetJobRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_sees_progress_then_the_terminal_state(stub: pb_grpc.GoTaskStub) -> None:
    [job_id] = await enqueue(stub, json_job("steps", 4))
    records = await collect(stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=AUTH,
                                          timeout=30))
    progress = [r.progress for r in records if r.state == "active"]
    assert progress == sorted(progress) and 0.25 < max(progress) <= 1.0
    assert any(r.progress_message.startswith("step ") for r in records)
    assert records[-1].state == "succeeded"
    assert [r.state for r in records].count("succeeded") == 1


async def test_cancel_a_scheduled_job(stub: pb_grpc.GoTaskStub) -> None:
    [job_id] = await enqueue(stub, json_job("add", 1, 2, delay_s=3600.0))
    reply = await call(stub.CancelJob, pb.CancelJobRequest(id=job_id))
    assert (reply.id, reply.state) == (job_id, "cancelled")
    assert (await finished(stub, job_id)).state == "cancelled"


async def test_list_jobs_pages_and_filters(stub: pb_grpc.GoTaskStub) -> None:
    ids = await enqueue(stub, *[json_job("add", i, i, queue="paged") for i in range(5)])
    first = await call(stub.ListJobs, pb.ListJobsRequest(queue="paged", limit=3))
    assert first.HasField("cursor") and len(first.jobs) == 3
    rest = await call(stub.ListJobs, pb.ListJobsRequest(queue="paged", cursor=first.cursor))
    assert [j.id for j in [*first.jobs, *rest.jobs]] == sorted(ids)
    assert not rest.HasField("cursor")
    with pytest.raises(grpc.RpcError) as caught:
        await call(stub.ListJobs, pb.ListJobsRequest(state="sleeping"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_queues_and_nodes(stub: pb_grpc.GoTaskStub, server: Server) -> None:
    await enqueue(stub, *[json_job("add", 1, 2, queue="idle") for _ in range(3)])
    queues = await call(stub.ListQueues, pb.ListQueuesRequest())
    assert [(q.name, dict(q.counts)) for q in queues.queues] == [("idle", {"queued": 3})]
    nodes = (await call(stub.ListNodes, pb.ListNodesRequest())).nodes
    assert [n.node for n in nodes] == [server.node.name]
    info = json_format.MessageToDict(nodes[0].info)
    assert info["instance"] == server.instance and "add" in info["tasks"]


async def test_dead_letter_list_retry_purge(stub: pb_grpc.GoTaskStub) -> None:
    [job_id] = await enqueue(stub, pb.JobSpec(task="always_fails"))
    assert (await finished(stub, job_id)).state == "dead"
    page = await call(stub.ListDead, pb.ListDeadRequest())
    assert [j.id for j in page.jobs] == [job_id] and page.jobs[0].error_type == "ValueError"
    assert (await call(stub.RetryDead, pb.DeadJobsRequest(ids=[job_id]))).count == 1
    assert (await finished(stub, job_id)).state == "dead"
    assert (await call(stub.RetryDead, pb.DeadJobsRequest(ids=["01NOSUCHJOB"]))).count == 0
    assert (await call(stub.PurgeDead, pb.DeadJobsRequest())).count == 1
    assert (await call(stub.ListDead, pb.ListDeadRequest())).jobs == []


async def test_bytes_and_non_finite_values_show_as_rest_shows_them(
        stub: pb_grpc.GoTaskStub) -> None:
    data = pack_args([b"\x00", float("nan")], {"n": 2**60})
    [job_id] = await enqueue(stub, pb.JobSpec(task="echo", arguments_msgpack=data))
    job = await finished(stub, job_id)
    assert json_format.MessageToDict(job.result) == {
        "args": [{"$base64": "AA=="}, "nan"], "kwargs": {"n": float(2**60)}}
    assert msgpack.unpackb(job.result_msgpack)["kwargs"] == {"n": 2**60}  # exact


async def test_json_kwargs_and_fractions(stub: pb_grpc.GoTaskStub) -> None:
    kwargs = struct_pb2.Struct()
    kwargs.update({"x": 1.5, "y": 2})
    spec = pb.JobSpec(task="add", arguments_json=pb.JsonArguments(kwargs=kwargs))
    [job_id] = await enqueue(stub, spec)
    assert msgpack.unpackb((await finished(stub, job_id)).result_msgpack) == 3.5


async def test_limits_where_data_enters(stub: pb_grpc.GoTaskStub) -> None:
    big = pack_args([b"x" * (400 << 10)])
    too_big_args = msgpack.packb([[b"x" * (600 << 10)], {}])
    with pytest.raises(grpc.RpcError) as caught:
        await enqueue(stub, pb.JobSpec(task="echo", arguments_msgpack=too_big_args))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:  # 12 jobs of 400 KiB: a 4.8 MiB message
        await enqueue(stub, *[pb.JobSpec(task="echo", arguments_msgpack=big)] * 12)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await call(stub.ListQueues, pb.ListQueuesRequest())).queues == []
