"""Issue 22, item 2 of the hostile test: a hung sync task leaked its thread slot.

With `--threads 2`, two `time.sleep(3600)` jobs past their timeout were marked dead but
kept the thread limiter's tokens, so every later sync job stayed `active` forever. Now
an abandoned thread is replaced (bounded), the count is reported in the node's info
(`gotask nodes`), and the node reports itself degraded past the bound.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio

from gotask import App
from gotask._app import pack_args
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import Server, _node_info, open_server
from gotask.config import NodeConfig

app = App("hung")
release = threading.Event()


@app.task(name="hang", max_attempts=1)
def hang() -> None:
    release.wait(60)


@app.task(name="quick")
def quick(x: int) -> int:
    return x + 1


@pytest.fixture(autouse=True)
def _release_hung_threads() -> Iterator[None]:
    release.clear()
    yield
    release.set()


async def _enqueue(server: Server, task: str, *args: object, **options: object) -> str:
    spec = JobSpec(task, pack_args(list(args), {}), **options)  # type: ignore[arg-type]
    reply = await server.node.call(server.broker, Enqueue((spec,)))
    return str(reply.ids[0])


async def _states(server: Server, *ids: str, wait_s: float) -> list[str]:
    reply = await server.node.call(server.broker, WaitJobs(ids, timeout_s=wait_s),
                                   timeout_s=wait_s + 5)
    return [job.state for job in reply.jobs]


async def test_timed_out_sync_jobs_do_not_cost_thread_slots() -> None:
    config = NodeConfig(app=app, name="hung", listen=None, threads=2, concurrency=8,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1)
    async with open_server(config, listen=False) as server:
        hung = [await _enqueue(server, "hang", timeout_s=0.3) for _ in range(2)]
        assert await _states(server, *hung, wait_s=10) == ["dead", "dead"]
        later = [await _enqueue(server, "quick", n) for n in range(4)]
        # The reproduction first: before, these stayed active behind the hung threads.
        assert await _states(server, *later, wait_s=5) == ["succeeded"] * 4
        assert server.threads.info() == {"threads_abandoned": 2, "degraded": False}
        info = _node_info(server)
        assert info["threads_abandoned"] == 2 and info["degraded"] is False
        release.set()  # the hung threads return: their extra slots go away again
        with trio.fail_after(5):
            while server.threads.abandoned:
                await trio.sleep(0.05)
        assert server.threads.limiter.total_tokens == 2


async def test_past_the_bound_the_node_is_degraded() -> None:
    config = NodeConfig(app=app, name="degraded", listen=None, threads=1, concurrency=8,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1)
    async with open_server(config, listen=False) as server:
        hung = [await _enqueue(server, "hang", timeout_s=0.2)]
        assert await _states(server, *hung, wait_s=10) == ["dead"]
        hung = [await _enqueue(server, "hang", timeout_s=0.2)]  # runs on the replacement
        assert await _states(server, *hung, wait_s=10) == ["dead"]
        assert server.threads.info() == {"threads_abandoned": 2, "degraded": True}
        assert server.threads.limiter.total_tokens == 2  # one replaced, no more
