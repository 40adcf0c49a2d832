"""Real processes: a node that joins another and dies (kill -9) or freezes (SIGSTOP)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

import gotask

from .. import processes
from ..processes import connect, free_port, stop

JOBS = 12


def start_node(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return processes.start_node("tests.lifecycle.killapp", port, "--concurrency", "8", *extra)


Cluster = tuple[gotask.Client, subprocess.Popen[bytes], subprocess.Popen[bytes]]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    owner_port, worker_port = free_port(), free_port()
    owner = start_node(owner_port, "--name", "owner")
    procs = [owner]
    try:
        client = connect(owner_port, owner)
        client.pause()  # the owner leases nothing until the worker node is gone
        worker = start_node(worker_port, "--name", "worker", "--join", f"127.0.0.1:{owner_port}")
        procs.append(worker)
        connect(worker_port, worker).close()
        yield client, owner, worker
        client.close()
    finally:
        stop(*procs)


def leased_by_worker(client: gotask.Client, ids: list[str]) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        jobs = [client.get(i) for i in ids]
        held = [j.id for j in jobs if j.state == "active" and j.lease_node == "worker"]
        if len(held) >= 8:
            return held
        time.sleep(0.1)
    raise AssertionError("the worker node never leased the jobs")


def all_done(client: gotask.Client, ids: list[str]) -> list[gotask.JobRecord]:
    for job_id in ids:
        client.wait(job_id, timeout_s=60)
    return [client.get(i) for i in ids]


def run_jobs_on_worker_then(client: gotask.Client, fault: Callable[[], None]) -> tuple[
        list[str], list[str]]:
    ids = [client.enqueue("slow", 3) for _ in range(JOBS)]
    held = leased_by_worker(client, ids)
    fault()
    client.pause(False)  # the owner takes over once the worker's leases expire
    return ids, held


@pytest.mark.slow
def test_kill_9_of_a_joined_worker_loses_nothing(cluster: Cluster) -> None:
    client, owner, worker = cluster
    ids, held = run_jobs_on_worker_then(client, worker.kill)
    jobs = all_done(client, ids)
    assert [j.state for j in jobs] == ["succeeded"] * JOBS
    for job in jobs:
        assert (job.lease_node, client.wait(job.id)) == ("owner", owner.pid)
        if job.id in held:
            assert job.attempt >= 2, job


@pytest.mark.slow
def test_a_frozen_worker_s_late_completions_are_rejected(cluster: Cluster) -> None:
    client, owner, worker = cluster
    ids, held = run_jobs_on_worker_then(client, lambda: worker.send_signal(signal.SIGSTOP))
    jobs = all_done(client, ids)
    worker.send_signal(signal.SIGCONT)  # wakes up believing it still holds its leases
    time.sleep(4)  # its jobs finish and it tries to acknowledge them: stale tokens
    assert worker.poll() is None
    for job in [client.get(i) for i in ids]:
        assert job.state == "succeeded"
        assert client.wait(job.id) == owner.pid, "a stale completion was accepted"
        assert job.settled_attempt == job.attempt
    assert {j.id for j in jobs if j.attempt >= 2} >= set(held)


@pytest.mark.slow
def test_sigterm_drains_and_releases_running_jobs(cluster: Cluster) -> None:
    client, _owner, worker = cluster
    quick = [client.enqueue("slow", 0.5) for _ in range(4)]
    stuck = [client.enqueue("slow", 60) for _ in range(4)]
    leased_by_worker(client, quick + stuck)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    for job_id in quick:
        assert client.get(job_id).state == "succeeded"
    for job in [client.get(i) for i in stuck]:
        # Given back at once: queued again, and the attempt does not count.
        assert (job.state, job.releases, job.attempts_counted) == ("queued", 1, 0), job


@pytest.mark.slow
def test_cancelling_a_running_sync_task_stops_it() -> None:
    port = free_port()
    node = start_node(port, "--name", "solo")
    try:
        with connect(port, node) as client:
            job_id = client.enqueue("spin", 60)
            while client.get(job_id).state != "active":
                time.sleep(0.05)
            started = time.monotonic()
            client.cancel(job_id)
            with pytest.raises(gotask.JobFailed, match="cancelled"):
                client.wait(job_id, timeout_s=20)
            assert time.monotonic() - started < 5
            assert client.get(job_id).state == "cancelled"
    finally:
        node.kill()
        node.wait()


def started_on_worker(client: gotask.Client, ids: list[str]) -> None:
    """Wait until the worker node holds every job and has stored the start of one."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        jobs = [client.get(i) for i in ids]
        if all(j.state == "active" and j.lease_node == "worker" for j in jobs) and any(
                j.started_attempt == j.attempt for j in jobs):
            return
        time.sleep(0.05)
    raise AssertionError("the worker node never ran the jobs")


@pytest.mark.slow
def test_kill_9_records_node_lost_for_running_jobs_and_spares_waiting_ones(
    cluster: Cluster,
) -> None:
    client, _owner, worker = cluster
    ids = [client.enqueue("slow", 3) for _ in range(JOBS)]  # 8 run, 4 wait (prefetched)
    started_on_worker(client, ids)
    worker.kill()
    worker.wait()
    at_death = [client.get(i) for i in ids]  # nothing changes them until leases expire
    ran = {j.id for j in at_death if j.started_attempt == j.attempt}
    waited = set(ids) - ran
    assert ran and waited, at_death
    client.pause(False)
    for job in all_done(client, ids):
        first, *between, last = job.history
        assert (first.attempt, first.node) == (1, "worker"), job.history
        assert (job.state, last.node, last.outcome) == ("succeeded", "owner", "succeeded")
        # A lease the dead node had asked for may still be granted to it once: never
        # started, it expires without counting.
        assert all(a.outcome == "not_started" for a in between), job.history
        if job.id in ran:
            assert (first.outcome, job.attempts_counted) == ("node_lost", 2), job
            assert first.error is not None and "NodeLost" in first.error
        else:  # leased but never started: the expiry costs no attempt
            assert (first.outcome, job.attempts_counted) == ("not_started", 1), job
