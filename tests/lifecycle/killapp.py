"""Tasks for the real-process fault tests: each returns the pid of the node that ran it."""

from __future__ import annotations

import os

import trio

import gotask

app = gotask.App("killapp")


@app.task(name="slow", max_attempts=5)
async def slow(seconds: float) -> int:
    await trio.sleep(seconds)
    return os.getpid()


@app.task(name="spin")
def spin(seconds: float) -> str:
    """A sync task that polls for cancellation, as sync tasks should."""
    import time

    job = gotask.current_job()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.01)
    return "finished"
