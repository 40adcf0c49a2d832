"""The tasks of the gRPC tests (also `--app tests.grpc.grpcapp` for a node process)."""

from __future__ import annotations

import trio

from gotask._app import App, current_job

app = App("grpc-tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="steps")
async def steps(n: int, go: str = "") -> str:
    """Report progress n times, each after the previous one was stored."""
    for i in range(1, n + 1):
        current_job().progress(i / n, f"step {i}")
        await trio.sleep(0.05)
    return "done"


@app.task(name="always_fails", max_attempts=1)
async def always_fails() -> None:
    raise ValueError("nope")


@app.task(name="sleepy")
async def sleepy(seconds: float) -> str:
    await trio.sleep(seconds)
    return "woke"
