"""The tasks of the HTTP and gRPC tests (also `--app tests.web.webapp` for a node process)."""

from __future__ import annotations

from pathlib import Path
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
async def steps(count: int, step_s: float = 0.05) -> int:
    """Report progress `count` times, one step every `step_s` seconds."""
    job = current_job()
    for i in range(count):
        job.progress(i / count, f"step {i} of {count}")
        await trio.sleep(step_s)
    return count


@app.task(name="fails_unless", max_attempts=1)
async def fails_unless(flag_path: str, message: str) -> str:
    """Fail with `message` until the file at `flag_path` exists."""
    if not Path(flag_path).exists():
        raise ValueError(message)
    return "passed"


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
