"""A worker runs many jobs in a row under one cancel scope: a job's cancellation or
timeout must end that job only, never the next one the same worker runs."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
import trio

from gotask._protocol import CancelJobs
from gotask._server import Server
from gotask.config import NodeConfig

from .conftest import app, enqueue, get, wait


@app.task(name="swallows_cancel")
async def swallows_cancel() -> str:
    try:
        await trio.sleep(1000)
    except trio.Cancelled:
        return "swallowed"
    return "slept"


@app.task(name="nursery_sleeper")
async def nursery_sleeper() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 1000)
        nursery.start_soon(trio.sleep, 1000)


@app.task(name="sync_sleep")
def sync_sleep(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture
def config() -> NodeConfig:
    # One worker, so consecutive jobs share it (and its cancel scope).
    return NodeConfig(app=app, name="n1", listen=None, concurrency=1,
                      lease_timeout_s=10, heartbeat_s=2, grace_s=5)


async def _cancel_when_active(server: Server, job_id: str) -> None:
    while (await get(server, job_id)).state != "active":
        await trio.sleep(0.1)
    await server.node.call(server.broker, CancelJobs((job_id,)))


async def test_cancelled_job_does_not_cancel_the_next(
    server: Server, autojump_clock: Any
) -> None:
    first = await enqueue(server, "sleepy", 1000)
    second = await enqueue(server, "sleepy", 5)
    await _cancel_when_active(server, first)
    assert (await wait(server, first)).state == "cancelled"
    job = await wait(server, second)
    assert (job.state, msgpack.unpackb(job.result)) == ("succeeded", "woke")


async def test_job_swallowing_cancel_does_not_leak_it(
    server: Server, autojump_clock: Any
) -> None:
    first = await enqueue(server, "swallows_cancel")
    second = await enqueue(server, "sleepy", 5)
    await _cancel_when_active(server, first)
    job = await wait(server, first)
    assert (job.state, msgpack.unpackb(job.result)) == ("succeeded", "swallowed")
    job = await wait(server, second)
    assert (job.state, msgpack.unpackb(job.result)) == ("succeeded", "woke")


async def test_cancel_through_a_nursery_in_the_task(
    server: Server, autojump_clock: Any
) -> None:
    job_id = await enqueue(server, "nursery_sleeper")
    await _cancel_when_active(server, job_id)
    assert (await wait(server, job_id)).state == "cancelled"
    job = await wait(server, await enqueue(server, "add", 1, 2))
    assert job.state == "succeeded"


async def test_timeout_ends_one_job_and_not_the_next(
    server: Server, autojump_clock: Any
) -> None:
    timed = await enqueue(server, "sleepy", 100, timeout_s=1, max_attempts=1)
    after = await enqueue(server, "sleepy", 50)
    job = await wait(server, timed)
    assert (job.state, job.error_type) == ("dead", "JobTimeout")
    assert (await wait(server, after)).state == "succeeded"


async def test_deadline_of_a_finished_job_does_not_outlive_it(
    server: Server, autojump_clock: Any
) -> None:
    quick = await enqueue(server, "sleepy", 1, timeout_s=2)
    slow = await enqueue(server, "sleepy", 30)
    assert (await wait(server, quick)).state == "succeeded"
    job = await wait(server, slow)
    assert (job.state, job.attempt) == ("succeeded", 1)


async def test_sync_job_times_out(server: Server) -> None:
    job = await wait(server, await enqueue(server, "sync_sleep", 2, timeout_s=0.2,
                                           max_attempts=1), timeout_s=10)
    assert (job.state, job.error_type) == ("dead", "JobTimeout")
    job = await wait(server, await enqueue(server, "sync_mul", 6, 7), timeout_s=10)
    assert job.state == "succeeded"
