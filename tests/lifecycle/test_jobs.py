from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio

from gotask._errors import InvalidArguments, RemoteActorError
from gotask._protocol import CancelJobs, CountQueues, Enqueue, JobSpec
from gotask._server import Server

from .conftest import calls, enqueue, get, wait


async def test_job_succeeds_with_result(server: Server, autojump_clock: Any) -> None:
    job_id = await enqueue(server, "add", 2, 3)
    job = await wait(server, job_id)
    assert job.state == "succeeded"
    assert msgpack.unpackb(job.result) == 5
    assert job.attempt == 1


async def test_sync_task_runs_in_a_thread(server: Server) -> None:
    job = await wait(server, await enqueue(server, "sync_mul", 6, 7), timeout_s=10)
    assert (job.state, msgpack.unpackb(job.result)) == ("succeeded", 42)


async def test_retries_with_exponential_backoff(server: Server, autojump_clock: Any) -> None:
    job_id = await enqueue(server, "flaky", "k1", 2)
    job = await wait(server, job_id)
    assert job.state == "succeeded"
    assert job.attempt == 3
    assert calls["k1"] == 3
    # Backoff 2 s then 4 s: the job cannot finish before 6 s after it was created.
    assert job.finished_at - job.created_at >= 6


async def test_exhausted_job_goes_to_the_dlq(server: Server, autojump_clock: Any) -> None:
    job = await wait(server, await enqueue(server, "always_fails"))
    assert job.state == "dead"
    assert job.attempt == 3
    assert job.error_type == "ValueError"
    assert "nope" in job.error


async def test_delayed_job_never_starts_early(server: Server, autojump_clock: Any) -> None:
    start = trio.current_time()
    job = await wait(server, await enqueue(server, "add", 1, 1, delay_s=30))
    assert job.state == "succeeded"
    assert job.leased_at - job.created_at >= 30
    assert trio.current_time() - start >= 30 - 1e-6


async def test_priorities_are_honoured(server: Server, autojump_clock: Any) -> None:
    from gotask._messages import PauseWorkers

    await server.node.call(server.node.address("dispatcher"), PauseWorkers(True))
    ids = [await enqueue(server, "record", "order", p, priority=p) for p in (1, 5, 3, 9, 0)]
    await server.node.call(server.node.address("dispatcher"), PauseWorkers(False))
    for job_id in ids:
        await wait(server, job_id)
    assert calls["order"][:1] == [9]
    assert sorted(calls["order"], reverse=True) == [9, 5, 3, 1, 0]


async def test_cancelled_queued_job_never_runs(server: Server, autojump_clock: Any) -> None:
    from gotask._messages import PauseWorkers

    await server.node.call(server.node.address("dispatcher"), PauseWorkers(True))
    job_id = await enqueue(server, "record", "never", 1)
    reply = await server.node.call(server.broker, CancelJobs((job_id,)))
    assert reply.states == ("cancelled",)
    await server.node.call(server.node.address("dispatcher"), PauseWorkers(False))
    await trio.sleep(5)
    assert "never" not in calls
    assert (await get(server, job_id)).state == "cancelled"


async def test_running_job_observes_cancellation(server: Server, autojump_clock: Any) -> None:
    job_id = await enqueue(server, "sleepy", 1000)
    while (await get(server, job_id)).state != "active":
        await trio.sleep(0.1)
    await server.node.call(server.broker, CancelJobs((job_id,)))
    job = await wait(server, job_id)
    assert job.state == "cancelled"
    assert trio.current_time() < 100


async def test_timeout_fails_the_attempt(server: Server, autojump_clock: Any) -> None:
    job = await wait(server, await enqueue(server, "sleepy", 100, timeout_s=1, max_attempts=1))
    assert (job.state, job.error_type) == ("dead", "JobTimeout")


async def test_unknown_task_and_bad_arguments_are_refused(server: Server) -> None:
    with pytest.raises(RemoteActorError) as info:
        await enqueue(server, "no_such_task")
    assert info.value.type_name == "TaskNotFound"
    assert "no_such_task" in info.value.message
    with pytest.raises(RemoteActorError) as info:
        await enqueue(server, "add", 1)
    assert info.value.type_name == "InvalidArguments"
    assert "missing a required argument" in info.value.message
    bad = JobSpec("add", b"\xc1")
    with pytest.raises(RemoteActorError, match="not valid msgpack"):
        await server.node.call(server.broker, Enqueue((bad,)))


def test_non_msgpack_argument_is_refused_before_enqueue() -> None:
    from gotask._app import pack_args

    with pytest.raises(InvalidArguments, match="set is not a msgpack value"):
        pack_args(({1, 2},))


async def test_result_that_is_not_msgpack_sends_job_to_dlq(
    server: Server, autojump_clock: Any
) -> None:
    job = await wait(server, await enqueue(server, "bad_result"))
    assert job.state == "dead"
    assert "not msgpack" in job.error


async def test_idempotency_key_returns_the_same_job(server: Server, autojump_clock: Any) -> None:
    first = await enqueue(server, "add", 1, 2, idempotency_key="order-1")
    second = await enqueue(server, "add", 1, 2, idempotency_key="order-1")
    assert first == second


async def test_many_jobs_all_finish(server: Server, autojump_clock: Any) -> None:
    ids = []
    for chunk in range(10):
        items = tuple(
            JobSpec("add", msgpack.packb([[chunk, i], {}])) for i in range(100)
        )
        reply = await server.node.call(server.broker, Enqueue(items))
        ids.extend(reply.ids)
    assert len(set(ids)) == 1000
    for job_id in ids[::97]:
        assert (await wait(server, job_id)).state == "succeeded"
    while True:
        counts = await server.node.call(server.broker, CountQueues())
        done = sum(c.count for c in counts.counts if c.state == "succeeded")
        if done == 1000:
            break
        await trio.sleep(0.1)


async def test_oversized_result_sends_job_to_dlq(server: Server, autojump_clock: Any) -> None:
    job = await wait(server, await enqueue(server, "huge_result"))
    assert job.state == "dead"
    assert "the limit is" in job.error


async def test_non_retryable_error_goes_to_dlq_at_once(server: Server, autojump_clock: Any) -> None:
    job = await wait(server, await enqueue(server, "refuses"))
    assert (job.state, job.attempt, job.error_type) == ("dead", 1, "NonRetryable")
