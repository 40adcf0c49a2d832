"""Tasks with `isolation="process"` run in real child processes: hard timeouts kill a
child stuck in C, a crash or `os._exit` fails only its attempt, children are recycled
by jobs and memory, and progress and cancellation cross the pipes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import trio

from gotask._app import ProcessLimits
from gotask._protocol import CancelJobs
from gotask._server import Server, open_server
from gotask.config import NodeConfig
from gotask.runtime import sim_world

from . import processtasks  # noqa: F401  (registers the tasks on the app)
from .conftest import app, enqueue, get, wait


@pytest.fixture
def limits() -> ProcessLimits:
    return ProcessLimits(children=2, kill_grace_s=1.0)


@pytest.fixture
async def server(limits: ProcessLimits) -> AsyncIterator[Server]:
    config = NodeConfig(app=app, name="n1", listen=None, concurrency=4, lease_timeout_s=10,
                        heartbeat_s=2, grace_s=5, processes=limits)
    async with open_server(config, world=sim_world(1), listen=False) as srv:
        yield srv


async def _result(server: Server, task: str, *args: Any) -> Any:
    job = await wait(server, await enqueue(server, task, *args))
    assert job.state == "succeeded", (job.error_type, job.error)
    return msgpack.unpackb(job.result)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_process_task_runs_in_a_reused_child(server: Server) -> None:
    first = await _result(server, "p_pid", 21)
    second = await _result(server, "p_pid", 1)
    assert first[1] == 42 and second[1] == 2
    assert first[0] != os.getpid()
    assert first[0] == second[0]  # one idle child serves the next job


async def test_timeout_kills_a_child_sleeping_in_c(server: Server) -> None:
    pid = (await _result(server, "p_pid", 0))[0]
    job = await wait(server, await enqueue(server, "p_sleep", 60, timeout_s=0.5))
    assert (job.state, job.error_type) == ("dead", "JobTimeout"), job.traceback
    assert not _alive(pid)  # the child that slept was the idle one, and it is gone
    assert (await _result(server, "p_pid", 0))[0] != pid


@pytest.mark.parametrize(("task", "died_of"), [("p_segfault", "died of SIGSEGV"),
                                               ("p_exit", "exited with status 3")])
async def test_a_dying_child_fails_its_attempt_and_is_replaced(
        server: Server, task: str, died_of: str) -> None:
    job = await wait(server, await enqueue(server, task))
    assert (job.state, job.error_type) == ("dead", "ChildDied")
    assert died_of in job.error
    assert (await _result(server, "p_pid", 5))[1] == 10  # the node lives on


async def test_an_error_keeps_its_type_and_child_traceback(server: Server) -> None:
    job = await wait(server, await enqueue(server, "p_fails"))
    assert (job.state, job.error_type, job.error) == ("dead", "KeyError", "'missing'")
    assert "processtasks.py" in job.traceback and 'raise KeyError("missing")' in job.traceback


@pytest.mark.parametrize("limits", [ProcessLimits(children=1)])
async def test_a_result_that_is_not_msgpack_fails_the_job_not_the_child(
        server: Server) -> None:
    pid = (await _result(server, "p_pid", 0))[0]
    job = await wait(server, await enqueue(server, "p_bad_result"))
    assert (job.state, job.error_type) == ("dead", "TypeError")
    assert "can not serialize 'object' object" in job.error
    assert (await _result(server, "p_pid", 0))[0] == pid  # the same child serves on


@pytest.mark.parametrize("limits", [ProcessLimits(children=1, max_rss_mb_per_child=150)])
async def test_a_child_past_its_memory_limit_is_replaced(server: Server) -> None:
    results = [await _result(server, "p_leak", 60) for _ in range(5)]
    pids = [pid for pid, _ in results]
    # 60 MiB a job: a child passes 150 MiB after its second or third job, then is replaced.
    assert len(set(pids)) >= 2
    assert max(kept for _, kept in results) <= 3
    assert not any(_alive(pid) for pid in set(pids[:-1]))


@pytest.mark.parametrize("limits", [ProcessLimits(children=1, max_jobs_per_child=2)])
async def test_a_child_is_replaced_after_max_jobs(server: Server) -> None:
    pids = [(await _result(server, "p_pid", i))[0] for i in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


async def test_progress_and_cancellation_reach_the_child(server: Server) -> None:
    job_id = await enqueue(server, "p_progress")
    with trio.fail_after(20):
        while (job := await get(server, job_id)).progress != 0.25:
            await trio.sleep(0.02)
    assert (job.state, job.progress_message) == ("active", "quarter")
    await server.node.call(server.broker, CancelJobs((job_id,)))
    job = await wait(server, job_id)
    assert job.state == "cancelled"
    assert (await _result(server, "p_pid", 1))[1] == 2


def test_process_isolation_needs_an_importable_sync_function() -> None:
    with pytest.raises(ValueError, match="needs a sync function"):
        app.task(name="x_async", isolation="process")(processtasks_async)
    with pytest.raises(ValueError, match="top level of an importable module"):
        app.task(name="x_local", isolation="process")(lambda: None)
    with pytest.raises(ValueError, match="isolation must be one of thread, process"):
        app.task(name="x_bad", isolation="fork")(os.getpid)


async def processtasks_async() -> None: ...


def test_child_limits_come_from_flags_and_environment() -> None:
    from gotask._errors import ConfigError
    from gotask._node_main import config_from_args
    from gotask.cli import build_parser

    def parse(*argv: str) -> Any:
        return build_parser().parse_args(["node", "--app", "examples.tasks", *argv])

    env = {"GOTASK_MAX_RSS_MB_PER_CHILD": "512"}
    config = config_from_args(parse("--children", "3", "--max-jobs-per-child", "100"), env)
    assert config.processes == ProcessLimits(children=3, max_jobs_per_child=100,
                                             max_rss_mb_per_child=512.0)
    with pytest.raises(ConfigError, match=r"^--max-jobs-per-child must be >= 1, got 0$"):
        config_from_args(parse("--max-jobs-per-child", "0"), {})


async def test_a_drain_past_its_grace_kills_the_child_and_releases_the_job(
        server: Server) -> None:
    pid = (await _result(server, "p_pid", 0))[0]
    job_id = await enqueue(server, "p_sleep", 60)  # runs in the idle child `pid`
    await _until_sleeping(server, job_id)
    await server.stop_now()
    assert (await get(server, job_id)).state == "queued"  # released: the attempt does not count
    assert not _alive(pid)


async def _until_sleeping(server: Server, job_id: str) -> None:
    with trio.fail_after(20):
        while (await get(server, job_id)).progress_message != "sleeping":
            await trio.sleep(0.02)
