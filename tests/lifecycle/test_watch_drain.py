from __future__ import annotations

from typing import Any

import trio
import trio.testing

from gotask._messages import PauseWorkers
from gotask._protocol import JobChanged, WatchJobs
from gotask._server import Server
from gotask.runtime import ActorContext

from .conftest import enqueue, get, wait


async def test_progress_is_pushed_live_to_a_watcher(server: Server, autojump_clock: Any) -> None:
    seen: list[tuple[str, float, str]] = []

    async def watcher(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                assert isinstance(env.msg, JobChanged)
                job = env.msg.job
                seen.append((job.state, job.progress, job.progress_message))

    addr = await server.node.start_actor("watcher", watcher)
    await server.node.call(server.node.address("dispatcher"), PauseWorkers(True))
    job_id = await enqueue(server, "reports", 3)
    current = await server.node.call(server.broker, WatchJobs((job_id,), addr))
    assert current.jobs[0].state == "queued"
    await server.node.call(server.node.address("dispatcher"), PauseWorkers(False))
    await wait(server, job_id)
    await trio.testing.wait_all_tasks_blocked()
    assert ("active", 0.0, "") in seen
    assert ("active", 1 / 3, "step 1") in seen
    assert ("active", 1.0, "step 3") in seen
    assert seen[-1][0] == "succeeded"


async def test_drain_finishes_running_jobs_and_releases_the_rest(
    server: Server, autojump_clock: Any
) -> None:
    short = [await enqueue(server, "sleepy", 1) for _ in range(4)]
    long = [await enqueue(server, "sleepy", 100) for _ in range(4)]
    while (await get(server, long[-1])).state != "active":
        await trio.sleep(0.1)
    await server.drain()
    for job_id in short:
        assert (await get(server, job_id)).state == "succeeded"
    for job_id in long:
        job = await get(server, job_id)
        assert job.state == "queued", job
        assert job.releases == 1
        assert job.attempts_counted == 0
