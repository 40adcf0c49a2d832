from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import gotask
from gotask._app import App, pack_args
from gotask._protocol import Enqueue, GetJobs, JobSpec, WaitJobs
from gotask._server import Server, open_server
from gotask.config import NodeConfig
from gotask.runtime import sim_world

app = App("lifecycle-tests")
calls: dict[str, int] = {}
progress_gate = trio.Event()


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="sync_mul")
def sync_mul(x: int, y: int) -> int:
    return x * y


@app.task(name="flaky", max_attempts=5,
          retry=gotask.RetryPolicy(kind="exponential", base_s=2.0, cap_s=60, jitter=0))
async def flaky(key: str, failures: int) -> str:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= failures:
        raise RuntimeError(f"failure {calls[key]}")
    return "ok"


@app.task(name="always_fails", max_attempts=3,
          retry=gotask.RetryPolicy(kind="fixed", base_s=1.0, cap_s=1.0, jitter=0))
async def always_fails() -> None:
    raise ValueError("nope")


@app.task(name="record", queue="default")
async def record(key: str, value: Any) -> None:
    calls.setdefault(key, []).append(value)  # type: ignore[attr-defined]


@app.task(name="sleepy")
async def sleepy(seconds: float) -> str:
    await trio.sleep(seconds)
    return "woke"


@app.task(name="reports")
async def reports(steps: int) -> int:
    job = gotask.current_job()
    for i in range(steps):
        job.progress((i + 1) / steps, f"step {i + 1}")
        await trio.sleep(1)
    return steps


@app.task(name="bad_result")
async def bad_result() -> object:
    return object()


@pytest.fixture
def config() -> NodeConfig:
    calls.clear()
    return NodeConfig(app=app, name="n1", listen=None, concurrency=8,
                      lease_timeout_s=10, heartbeat_s=2, grace_s=5)


@pytest.fixture
async def server(config: NodeConfig) -> AsyncIterator[Server]:
    # The storage clock must follow trio's clock so autojump tests can skip time.
    async with open_server(config, world=sim_world(1), listen=False) as srv:
        yield srv


async def enqueue(server: Server, task: str, *args: Any, **options: Any) -> str:
    kwargs = options.pop("kwargs", {})
    spec = JobSpec(task, pack_args(args, kwargs), **options)
    reply = await server.node.call(server.broker, Enqueue((spec,)))
    return reply.ids[0]


async def wait(server: Server, job_id: str, timeout_s: float = 60) -> Any:
    reply = await server.node.call(server.broker, WaitJobs((job_id,), timeout_s),
                                   timeout_s=timeout_s + 5)
    return reply.jobs[0]


async def get(server: Server, job_id: str) -> Any:
    reply = await server.node.call(server.broker, GetJobs((job_id,)))
    return reply.jobs[0]


@app.task(name="huge_result")
async def huge_result() -> bytes:
    return b"x" * (600 * 1024)


@app.task(name="refuses", max_attempts=5)
async def refuses() -> None:
    raise gotask.NonRetryable("the order no longer exists")
