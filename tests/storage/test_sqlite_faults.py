"""Real processes on a SQLite file: kill -9 of the owning node, and a full disk.

Nodes run `--app tests.storage.test_sqlite_faults` (the task below) on a database in
the test's temporary directory. The kill -9 test has the issue's shape (1,000 leased,
1,000 queued, 100 scheduled, and enqueues in flight); `GOTASK_FAULT_SCALE` scales it
down (e.g. 0.2) where CI time needs it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import gotask
from gotask._errors import StorageUnavailable

from .. import processes
from ..processes import connect, free_port, stop

SCALE = float(os.environ.get("GOTASK_FAULT_SCALE", "1"))
LEASED, QUEUED, SCHEDULED = int(1000 * SCALE), int(1000 * SCALE), int(100 * SCALE)

app = gotask.App("sqlite-faults")


@app.task(name="hold", max_attempts=5)
async def hold(tag: str = "") -> int:
    """Sleeps `$HOLD_S` seconds of the node that runs it; returns that node's pid."""
    await trio.sleep(float(os.environ.get("HOLD_S", "0")))
    return os.getpid()


def start_node(port: int, name: str, *extra: str, hold_s: float = 0.0,
               file_bytes_max: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOLD_S": str(hold_s)}
    if file_bytes_max is None:
        return processes.start_node("tests.storage.test_sqlite_faults", port, "--name", name,
                                    *extra, env=env)
    limit = file_bytes_max

    def limit_files() -> None:  # Python ignores SIGXFSZ: a write past it fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [*_node_cmd(port, name, *extra)]
    return subprocess.Popen(cmd, cwd=processes.ROOT, env=env, preexec_fn=limit_files,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _node_cmd(port: int, name: str, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "gotask.cli", "node", "--app",
            "tests.storage.test_sqlite_faults", "--listen", f"127.0.0.1:{port}",
            *processes.FAST_LEASES, "--name", name, *extra]


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Enqueuer(threading.Thread):
    """Enqueues small batches until told to stop or an enqueue fails; keeps the ids of
    every enqueue that was answered."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with gotask.Client([f"127.0.0.1:{self.port}"], connect_rounds=1) as client:
            while not self.stopping.is_set():
                try:
                    self.acked += client.enqueue_many([("hold", ("late",), None, None)] * 10)
                except gotask.GoTaskError:
                    return  # the owner died: every id answered before is stored


@pytest.mark.slow
def test_kill_9_of_the_owner_loses_no_acknowledged_job(tmp_path: Path) -> None:
    storage = f"sqlite://{tmp_path}/data/gotask.db"
    owner_port, worker_port = free_port(), free_port()
    # A node leases `concurrency` jobs to run and as many again ahead (prefetch).
    owner = start_node(owner_port, "owner", "--storage", storage,
                       "--concurrency", str(LEASED // 2), hold_s=600)
    procs = [owner]
    try:
        with contextlib.ExitStack() as clients:
            client = clients.enter_context(connect(owner_port, owner))
            worker = start_node(worker_port, "worker", "--join", f"127.0.0.1:{owner_port}",
                                "--concurrency", "50")
            procs.append(worker)
            at_worker = clients.enter_context(connect(worker_port, worker))
            at_worker.pause()  # the worker leases nothing until the owner has crashed
            ids = client.enqueue_many([("hold", (), None, None)] * (LEASED + QUEUED))
            ids += client.enqueue_many([("hold", (), None, {"delay_s": 8.0})] * SCHEDULED)
            wait_until(lambda: client.queues()["default"].get("active") == LEASED, 60,
                       "the owner to lease its fill")
            counts = client.queues()["default"]
            assert (counts.get("queued"), counts.get("scheduled")) == (QUEUED, SCHEDULED)
            enqueuer = Enqueuer(owner_port)
            enqueuer.start()
            wait_until(lambda: len(enqueuer.acked) >= 100, 30, "enqueues in flight")
            owner.kill()  # SIGKILL, mid-run
            owner.wait()
            enqueuer.stopping.set()
            at_worker.pause(False)
            # The returning owner's jobs take a little time, so the joined worker (whose
            # link reconnects with backoff) has jobs left to run even on a loaded machine.
            owner = start_node(owner_port, "owner", "--storage", storage, "--concurrency", "8",
                               hold_s=0.05)
            procs.append(owner)
            client = clients.enter_context(connect(owner_port, owner))
            enqueuer.join(60)
            assert not enqueuer.is_alive()
            acknowledged = ids + enqueuer.acked
            for job_id in acknowledged:
                assert client.wait(job_id, timeout_s=120) in (owner.pid, worker.pid)
            done = [client.get(job_id) for job_id in acknowledged]
            assert {j.state for j in done} == {"succeeded"}
            assert sum(j.lease_node == "worker" for j in done) > 0  # the joined worker went on
            assert sum(j.attempt >= 2 for j in done) >= LEASED  # the dead owner's leases ran again
    finally:
        stop(*procs)


@pytest.mark.slow
def test_a_full_disk_refuses_enqueues_and_loses_nothing(tmp_path: Path) -> None:
    storage = f"sqlite://{tmp_path}/gotask.db"
    port = free_port()
    node = start_node(port, "owner", "--storage", storage, file_bytes_max=1 << 20)
    procs = [node]
    try:
        with connect(port, node) as client:
            client.pause()
            acked: list[str] = []
            refusal: Exception | None = None
            payload = "x" * 2000
            for _ in range(200):
                try:
                    acked += client.enqueue_many([("hold", (payload,), None, None)] * 20)
                except gotask.GoTaskError as exc:
                    refusal = exc
                    break
            assert refusal is not None, "the disk never filled"
            assert isinstance(refusal, StorageUnavailable), repr(refusal)
            assert "SQLite storage cannot write" in str(refusal)
            assert node.poll() is None  # the node stays up and keeps answering
            assert client.queues()["default"]["queued"] == len(acked)
        stop(node)
        node = start_node(port, "owner", "--storage", storage)
        procs.append(node)
        with connect(port, node) as client:
            for job_id in acked:
                assert client.wait(job_id, timeout_s=120) == node.pid
    finally:
        stop(*procs)
