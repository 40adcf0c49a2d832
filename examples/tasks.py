"""Example tasks: what `make run` starts a node with.

Start a node with them: `gotask node --app examples.tasks`.
"""

from __future__ import annotations

import trio

import gotask

app = gotask.App("examples")


@app.task(name="add")
def add(x: int, y: int) -> int:
    """A sync task: runs in a worker thread."""
    return x + y


@app.task(name="noop")
async def noop() -> None:
    """Does nothing; what `gotask bench` runs."""


@app.task(name="resize_image")
async def resize_image(name: str, steps: int = 5) -> str:
    """An async task that reports progress as it goes."""
    job = gotask.current_job()
    for step in range(steps):
        await trio.sleep(0.5)
        job.progress((step + 1) / steps, f"{name}: pass {step + 1} of {steps}")
    return f"{name} resized"


_flaky_calls: dict[str, int] = {}


@app.task(
    name="flaky_fetch",
    max_attempts=5,
    retry=gotask.RetryPolicy(kind="exponential", base_s=1.0, cap_s=30.0, jitter=0.1),
)
async def flaky_fetch(url: str, failures: int = 2) -> str:
    """Fails `failures` times, then succeeds: watch the backoff in its timestamps."""
    _flaky_calls[url] = _flaky_calls.get(url, 0) + 1
    if _flaky_calls[url] <= failures:
        raise ConnectionError(f"{url} did not answer (attempt {_flaky_calls[url]})")
    return f"fetched {url}"


@app.task(
    name="charge_card",
    max_attempts=3,
    retry=gotask.RetryPolicy(kind="fixed", base_s=1.0, cap_s=1.0, jitter=0.0),
)
def charge_card(order_id: int) -> None:
    """Always fails: ends in the dead-letter queue after 3 attempts."""
    raise RuntimeError(f"card declined for order {order_id}")
