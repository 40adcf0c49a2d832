"""Real processes on Redis: kill -9 a node, restart Redis, no Redis at start, a poison job.

Nodes run `--app tests.storage.test_redis_faults` (the tasks below). Each test uses a
key prefix of its own on the test Redis, or a throwaway `redis-server` of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

import gotask
from gotask._job import UNSTARTED_FREE_MAX, JobRecord
from gotask.actors.storage.base import AckItem, AckJobs, GetJobs

from .. import processes
from ..processes import ROOT, connect, free_port, stop

REDIS_URL = os.environ.get("GOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_prefixes = itertools.count(1)

app = gotask.App("redis-faults")


@app.task(name="hold", max_attempts=5)
async def hold() -> int:
    """Sleeps `$HOLD_S` seconds of the node that runs it; returns that node's pid."""
    await trio.sleep(float(os.environ.get("HOLD_S", "0")))
    return os.getpid()


@app.task(name="poison", max_attempts=3)
def poison() -> None:
    """Kills the process running it, every time."""
    os.kill(os.getpid(), signal.SIGKILL)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def url() -> Iterator[str]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL} ({exc}); set GOTASK_TEST_REDIS_URL")
    from gotask.actors.storage.redis import delete_prefix, with_prefix

    scoped = with_prefix(REDIS_URL, f"gotask-faults-{os.getpid()}-{next(_prefixes)}")
    yield scoped
    delete_prefix(scoped)


def start_node(port: int, storage: str, name: str, *extra: str,
               hold_s: float = 0.0) -> subprocess.Popen[bytes]:
    return processes.start_node("tests.storage.test_redis_faults", port, "--name", name,
                                "--storage", storage, *extra,
                                env={**os.environ, "HOLD_S": str(hold_s)})


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_storage(url: str, cmd: Any) -> Any:
    """Run one storage command straight against Redis (Redis TIME is the clock)."""
    from gotask.actors.storage._redis_backend import RedisBackend, RedisSettings

    async def go() -> Any:
        backend = RedisBackend(RedisSettings.from_url(url))
        await backend.open(subscribe=False)
        try:
            (reply,) = await backend.execute([cmd])
        finally:
            await backend.close()
        if isinstance(reply, Exception):
            raise reply
        return reply

    return asyncio.run(go())


def records(client: gotask.Client, ids: list[str]) -> list[JobRecord]:
    return [client.get(i) for i in ids]


# -- kill -9 of a node holding a thousand leases ---------------------------------------------


@pytest.mark.slow
def test_kill_9_of_a_node_holding_1000_leases_loses_nothing(url: str) -> None:
    victim_port, survivor_port = free_port(), free_port()
    survivor = start_node(survivor_port, url, "survivor", "--concurrency", "250")
    victim = start_node(victim_port, url, "victim", "--concurrency", "500", hold_s=600)
    try:
        client = connect(survivor_port, survivor)
        client.pause()  # the survivor leases nothing until the victim is dead
        connect(victim_port, victim).close()
        ids = client.enqueue_many([("hold", (), None, None)] * 1000)
        wait_until(lambda: client.queues()["default"].get("active") == 1000, 30,
                   "the victim to lease every job")
        held = [j for j in records(client, ids) if j.lease_node == "victim"]
        assert len(held) == 1000
        victim.kill()
        client.pause(False)
        for job_id in ids:
            assert client.wait(job_id, timeout_s=60) == survivor.pid
        done = records(client, ids)
        assert {(j.state, j.lease_node) for j in done} == {("succeeded", "survivor")}
        assert all(j.attempt >= 2 and j.settled_attempt == j.attempt for j in done)
        late = AckJobs(tuple(AckItem(j.id, j.attempt, b"\xc0") for j in held))
        assert set(run_storage(url, late).statuses) == {"stale"}
        client.close()
    finally:
        stop(victim, survivor)


# -- a Redis restart ---------------------------------------------------------------------------


def start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)],
        stdout=subprocess.DEVNULL)
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    wait_until(lambda: _pings(probe), 10, "redis-server to start")
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_jobs_acknowledged_before_a_redis_restart_all_complete(tmp_path: Path) -> None:
    redis_port, node_port = free_port(), free_port()
    server = start_redis(redis_port, tmp_path)
    node = start_node(node_port, f"redis://127.0.0.1:{redis_port}/0", "n1",
                      "--concurrency", "8", hold_s=0.02)
    try:
        client = connect(node_port, node)
        ids = client.enqueue_many([("hold", (), None, None)] * 400)
        wait_until(lambda: client.queues()["default"].get("succeeded", 0) >= 40, 20,
                   "jobs to run")
        server.kill()  # a crash: only what was fsynced to the AOF survives
        server.wait()
        server = start_redis(redis_port, tmp_path)
        counts = client.queues()["default"]
        assert counts.get("succeeded", 0) < 400, counts  # work was pending at the crash
        more = client.enqueue_many([("hold", (), None, None)] * 50)
        for job_id in ids + more:
            assert client.wait(job_id, timeout_s=60) == node.pid
        assert {j.state for j in records(client, ids + more)} == {"succeeded"}
        assert node.poll() is None
        client.close()
    finally:
        stop(node, server)
    log = node.stderr.read() if node.stderr else b""
    assert b"lost Redis" in log and b"reconnected to Redis" in log, log[-2000:]


# -- no Redis at start -------------------------------------------------------------------------


def test_node_without_redis_exits_with_a_clear_error() -> None:
    node = start_node(free_port(), f"redis://127.0.0.1:{free_port()}/0", "lonely")
    _, err = node.communicate(timeout=30)
    assert node.returncode == 1
    assert b"cannot reach Redis at redis://127.0.0.1:" in err
    assert b"Traceback" not in err


# -- a poison job ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_that_kills_its_node_ends_in_the_dlq(url: str) -> None:
    port = free_port()
    short = ("--lease-timeout", "4", "--heartbeat", "1")  # six deaths, each a lease long
    deaths, node = 0, start_node(port, url, "poisoned", *short)
    try:
        client = connect(port, node)
        job_id = client.enqueue("poison")
        client.close()
        deadline = time.monotonic() + 120
        while (job := run_storage(url, GetJobs((job_id,))).jobs[0]).state != "dead":
            assert time.monotonic() < deadline, job
            if node.poll() is not None:
                assert node.returncode == -signal.SIGKILL
                deaths += 1
                node = start_node(port, url, "poisoned", *short)
            time.sleep(0.1)
        time.sleep(1)
        assert node.poll() is None, "the node ran the dead job again"
        # Its start never reaches storage (the process dies first): the first expiries are
        # free releases, then each one counts (docs/guarantees.md).
        assert (deaths, job.attempt, job.unstarted_expiries, job.error_type) == (
            3 + UNSTARTED_FREE_MAX, 3 + UNSTARTED_FREE_MAX, UNSTARTED_FREE_MAX, "LeaseExpired")
        assert [a.outcome for a in job.history] == (["not_started"] * UNSTARTED_FREE_MAX
                                                    + ["lease_expired"] * 3)
    finally:
        stop(node)


# -- nodes of a cluster share the work and see each other ------------------------------------


@pytest.mark.slow
def test_a_job_enqueued_at_one_node_is_waited_on_at_another(url: str) -> None:
    port_a, port_b = free_port(), free_port()
    a = start_node(port_a, url, "a")
    b = start_node(port_b, url, "b")
    try:
        at_a, at_b = connect(port_a, a), connect(port_b, b)
        ids = [at_a.enqueue("hold") for _ in range(20)]
        assert {at_b.wait(i, timeout_s=30) for i in ids} <= {a.pid, b.pid}
        out = wait_until(lambda: _nodes_json(port_b), 20, "both nodes to register")
        assert {n["node"] for n in out} == {"a", "b"}
        at_a.close()
        at_b.close()
    finally:
        stop(a, b)


def _nodes_json(port: int) -> list[dict[str, Any]] | None:
    done = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "nodes", "--json", "--node", f"127.0.0.1:{port}"],
        cwd=ROOT, capture_output=True, timeout=30, check=True)
    nodes: list[dict[str, Any]] = json.loads(done.stdout)
    return nodes if len(nodes) == 2 else None
