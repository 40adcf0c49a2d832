"""Real processes on PostgreSQL: kill -9 a node, restart PostgreSQL, terminate the node's
connections, no PostgreSQL at start.

Nodes run `--app tests.storage.test_postgres_faults` (the tasks below). Each test uses a
schema of its own on the test database, or a throwaway PostgreSQL of its own (initdb in
a temporary directory, run as the postgres user when the tests run as root).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import trio

import gotask
from gotask._job import JobRecord
from gotask.actors.storage._postgres_backend import PostgresBackend
from gotask.actors.storage._postgres_settings import PostgresSettings
from gotask.actors.storage.base import AckItem, AckJobs

from .. import processes
from ..processes import connect, free_port, stop
from ._postgres_support import DSN, drop_schema, unique_schema, unreachable, url_for

PGBIN = Path(os.environ.get("GOTASK_TEST_PGBIN", "/usr/lib/postgresql/15/bin"))
FAST = ("--lease-timeout", "6", "--heartbeat", "2")

app = gotask.App("postgres-faults")


@app.task(name="hold", max_attempts=5)
async def hold() -> int:
    """Sleeps `$HOLD_S` seconds of the node that runs it; returns that node's pid."""
    await trio.sleep(float(os.environ.get("HOLD_S", "0")))
    return os.getpid()


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def url() -> Iterator[str]:
    if (reason := unreachable()) is not None:
        pytest.skip(reason)
    schema = unique_schema("f")
    yield url_for(schema)
    drop_schema(schema)


def start_node(port: int, storage: str, name: str, *extra: str,
               hold_s: float = 0.0) -> subprocess.Popen[bytes]:
    return processes.start_node("tests.storage.test_postgres_faults", port, "--name", name,
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
    """Run one storage command straight against PostgreSQL (its clock is the clock)."""
    async def go() -> Any:
        backend = PostgresBackend(PostgresSettings.from_url(url))
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
    survivor = start_node(survivor_port, url, "survivor", "--concurrency", "250", *FAST)
    victim = start_node(victim_port, url, "victim", "--concurrency", "500", *FAST,
                        hold_s=600)
    try:
        client = connect(survivor_port, survivor)
        client.pause()  # the survivor leases nothing until the victim is dead
        connect(victim_port, victim).close()
        ids = client.enqueue_many([("hold", (), None, None)] * 1000)
        wait_until(lambda: client.queues()["default"].get("active") == 1000, 60,
                   "the victim to lease every job")
        held = [j for j in records(client, ids) if j.lease_node == "victim"]
        assert len(held) == 1000
        victim.kill()
        client.pause(False)
        for job_id in ids:
            assert client.wait(job_id, timeout_s=90) == survivor.pid
        done = records(client, ids)
        assert {(j.state, j.lease_node) for j in done} == {("succeeded", "survivor")}
        assert all(j.attempt >= 2 and j.settled_attempt == j.attempt for j in done)
        late = AckJobs(tuple(AckItem(j.id, j.attempt, b"\xc0") for j in held))
        assert set(run_storage(url, late).statuses) == {"stale"}
        client.close()
    finally:
        stop(victim, survivor)


# -- the node's connections terminated ----------------------------------------------------------


def _terminate_gotask_backends(schema_url: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(DSN)
        try:
            return int(await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'gotask' AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()
    return asyncio.run(go())


@pytest.mark.slow
def test_terminated_connections_are_replaced_and_work_goes_on(url: str) -> None:
    port = free_port()
    node = start_node(port, url, "n1", "--concurrency", "16", hold_s=0.01)
    try:
        client = connect(port, node)
        first = client.enqueue_many([("hold", (), None, None)] * 100)
        assert _terminate_gotask_backends(url) >= 2  # the pool and the listener at least
        second = client.enqueue_many([("hold", (), None, None)] * 100)
        for job_id in first + second:
            assert client.wait(job_id, timeout_s=60) == node.pid
        started = time.monotonic()
        assert client.wait(client.enqueue("hold"), timeout_s=30) == node.pid
        assert time.monotonic() - started < 2.0  # picked up by notification again
        assert node.poll() is None
        client.close()
    finally:
        stop(node)


# -- a PostgreSQL restart ------------------------------------------------------------------------


def _as_postgres(*cmd: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Any, Any]]:
    if not (PGBIN / "initdb").exists() or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip(f"no PostgreSQL binaries in {PGBIN}; set GOTASK_TEST_PGBIN")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="gotask-pg-"))  # pytest's tmp_path is root-only
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(_as_postgres(str(PGBIN / "initdb"), "-D", str(data / "data"), "-U",
                                "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"),
                   check=True, capture_output=True)

    def start() -> None:
        subprocess.run(_as_postgres(
            str(PGBIN / "pg_ctl"), "-D", str(data / "data"), "-l", str(data / "log"), "-w",
            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start"), check=True, capture_output=True)

    def stop_server(mode: str = "immediate") -> None:
        subprocess.run(_as_postgres(str(PGBIN / "pg_ctl"), "-D", str(data / "data"), "-m",
                                    mode, "-w", "stop"), check=False, capture_output=True)

    start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", start, stop_server
    finally:
        stop_server()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_jobs_acknowledged_before_a_postgres_restart_all_complete(
        own_postgres: tuple[str, Any, Any]) -> None:
    storage, start_server, stop_server = own_postgres
    port = free_port()
    node = start_node(port, storage, "n1", "--concurrency", "8", hold_s=0.02)
    try:
        client = connect(port, node)
        ids = client.enqueue_many([("hold", (), None, None)] * 400)
        wait_until(lambda: client.queues()["default"].get("succeeded", 0) >= 40, 30,
                   "jobs to run")
        stop_server("immediate")  # a crash: what was committed survives
        start_server()
        more = client.enqueue_many([("hold", (), None, None)] * 50)
        for job_id in ids + more:
            assert client.wait(job_id, timeout_s=90) == node.pid
        assert {j.state for j in records(client, ids + more)} == {"succeeded"}
        assert node.poll() is None
        client.close()
    finally:
        stop(node)
    log = node.stderr.read() if node.stderr else b""
    assert b"lost PostgreSQL" in log and b"reconnected to PostgreSQL" in log, log[-2000:]


# -- no PostgreSQL at start ------------------------------------------------------------------


def test_node_without_postgres_exits_with_a_clear_error() -> None:
    node = start_node(free_port(), f"postgresql://postgres@127.0.0.1:{free_port()}/x", "lonely")
    _, err = node.communicate(timeout=60)
    assert node.returncode == 1
    assert b"cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:" in err
    assert b"Traceback" not in err
