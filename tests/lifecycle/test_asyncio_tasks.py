"""Tasks with `loop="asyncio"` run in the node's asyncio loop, in real time: timeouts,
cancellation, `current_job()` and progress behave as for trio tasks, and many jobs
share one loop at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgpack
import pytest
import trio

import gotask
from gotask._app import App
from gotask._protocol import CancelJobs
from gotask._server import Server

from .conftest import app, enqueue, get, wait

seen: dict[str, Any] = {}
gate = threading.Event()


@app.task(name="aio_whoami", loop="asyncio")
async def aio_whoami(delay_s: float) -> list[Any]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay_s)
    job = gotask.current_job()
    return [job.job_id, job.attempt, id(loop), threading.get_ident()]


@app.task(name="aio_sleeps", loop="asyncio")
async def aio_sleeps(key: str, seconds: float) -> str:
    seen[key] = "started"
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        seen[key] = "cancelled in asyncio"
        raise
    return "slept"


@app.task(name="aio_reports", loop="asyncio")
async def aio_reports() -> str:
    gotask.current_job().progress(0.5, "half way")
    while not gate.is_set():
        await asyncio.sleep(0.01)
    return "done"


async def _active(server: Server, job_id: str) -> Any:
    while (job := await get(server, job_id)).state != "active":
        await trio.sleep(0.01)
    return job


async def test_asyncio_task_runs_in_a_loop_thread_with_its_job_context(server: Server) -> None:
    job_id = await enqueue(server, "aio_whoami", 0.01)
    job = await wait(server, job_id)
    assert job.state == "succeeded"
    got_id, attempt, _, thread = msgpack.unpackb(job.result)
    assert (got_id, attempt) == (job_id, 1)
    assert thread != threading.get_ident()  # not the trio thread


async def test_asyncio_timeout_cancels_the_asyncio_task(server: Server) -> None:
    seen.clear()
    job_id = await enqueue(server, "aio_sleeps", "t", 100, timeout_s=0.2, max_attempts=1)
    job = await wait(server, job_id)
    assert (job.state, job.error_type) == ("dead", "JobTimeout")
    assert seen["t"] == "cancelled in asyncio"


async def test_asyncio_cancellation_reaches_the_asyncio_task(server: Server) -> None:
    seen.clear()
    job_id = await enqueue(server, "aio_sleeps", "c", 100)
    with trio.fail_after(10):  # "active" comes with the lease, before the task starts
        while seen.get("c") != "started":
            await trio.sleep(0.01)
    await server.node.call(server.broker, CancelJobs((job_id,)))
    job = await wait(server, job_id)
    assert (job.state, job.error_type) == ("cancelled", "JobCancelled")
    assert seen["c"] == "cancelled in asyncio"
    after = await wait(server, await enqueue(server, "aio_sleeps", "n", 0.01))
    assert (after.state, msgpack.unpackb(after.result)) == ("succeeded", "slept")


async def test_asyncio_progress_is_reported_while_running(server: Server) -> None:
    gate.clear()
    job_id = await enqueue(server, "aio_reports")
    job = await _active(server, job_id)
    with trio.fail_after(10):
        while job.progress != 0.5:
            await trio.sleep(0.01)
            job = await get(server, job_id)
    assert (job.state, job.progress_message) == ("active", "half way")
    gate.set()
    assert (await wait(server, job_id)).state == "succeeded"


async def test_many_asyncio_jobs_share_one_loop_at_once(server: Server) -> None:
    # 8 workers (the fixture's concurrency): 8 jobs of 0.5 s overlap, in one loop.
    ids = [await enqueue(server, "aio_whoami", 0.5) for _ in range(24)]
    began = trio.current_time()
    results = [msgpack.unpackb((await wait(server, i)).result) for i in ids]
    assert {r[0] for r in results} == set(ids)
    assert len({(r[2], r[3]) for r in results}) == 1  # one loop, one thread
    assert trio.current_time() - began < 24 * 0.5  # they overlapped (not a benchmark)


def test_app_default_loop_applies_to_async_tasks_only() -> None:
    local = App("aio-default", loop="asyncio")

    @local.task
    async def a() -> None: ...

    @local.task(loop="trio")
    async def b() -> None: ...

    @local.task
    def c() -> None: ...

    assert [local.get(n).loop for n in ("a", "b", "c")] == ["asyncio", "trio", "trio"]


def test_bad_loop_options_are_refused() -> None:
    local = App("aio-bad")
    with pytest.raises(ValueError, match="loop must be one of trio, asyncio"):
        local.task(loop="gevent")(aio_whoami)
    with pytest.raises(ValueError, match="needs an async def function"):
        local.task(name="s", loop="asyncio")(lambda: None)
    with pytest.raises(ValueError, match="loop must be one of"):
        App("x", loop="curio")
