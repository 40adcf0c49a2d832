"""The tasks of the HTTP and gRPC tests (also `--app tests.web.webapp` for a node process)."""

from __future__ import annotations

from typing import Any

import trio

from gotask._app import App, current_job
from gotask._retry import RetryPolicy

app = App("web-tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="echo")
async def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="blob")
async def blob() -> bytes:
    return b"\x00\xffbytes"


@app.task(name="always_fails", max_attempts=1)
async def always_fails() -> None:
    raise ValueError("nope")


@app.task(name="sleepy")
async def sleepy(seconds: float) -> str:
    await trio.sleep(seconds)
    return "woke"


@app.task(name="steps")
async def steps(n: int) -> str:
    """Report progress n times, 50 ms apart."""
    for i in range(1, n + 1):
        current_job().progress(i / n, f"step {i}")
        await trio.sleep(0.05)
    return "done"


@app.task(name="flaky", retry=RetryPolicy("fixed", base_s=0.05, cap_s=0.05, jitter=0.0))
async def flaky() -> str:
    """Fails its first attempt, succeeds on the retry."""
    if current_job().attempt == 1:
        raise ValueError("first attempt fails")
    return "second time lucky"


@app.task(name="hang", queue="slow", max_attempts=1)
async def hang() -> None:
    """Never returns: its lease expires once its node is gone."""
    await trio.sleep_forever()


# A cron entry that never fires while tests run (03:00 on 1 January): for the cron routes.
app.add_cron("new-year", "add", "0 3 1 1 *", args=[1, 1], queue="cron")
