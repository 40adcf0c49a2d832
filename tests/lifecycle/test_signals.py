"""Real processes and real signals: drain on the first, stop at once on the second, and
one parseable log line per job event."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import gotask

from .. import processes
from ..processes import connect, free_port, stop


def start_node(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return processes.start_node("tests.lifecycle.killapp", port, "--concurrency", "8",
                                "--log-format", "json", "--log-level", "INFO", *extra)


def json_lines(node: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    assert node.stderr is not None
    return [json.loads(line) for line in node.stderr.read().decode().splitlines()]


def wait_active(client: gotask.Client, ids: list[str], node: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        jobs = [client.get(i) for i in ids]
        if all(j.state == "active" and j.lease_node == node for j in jobs):
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} never ran every job")


def events(lines: list[dict[str, Any]], event: str) -> dict[str, dict[str, Any]]:
    return {r["job_id"]: r for r in lines if r.get("event") == event}


def test_job_events_are_logged_as_json_without_arguments() -> None:
    port = free_port()
    node = start_node(port, "--name", "solo")
    try:
        with connect(port, node) as client:
            good = client.enqueue("slow", 0.2)
            retried = client.enqueue("slow", "SECRET-ARGUMENT", max_attempts=2)
            client.wait(good, timeout_s=20)
            deadline = time.monotonic() + 30
            while client.get(retried).state != "dead":
                assert time.monotonic() < deadline, "the failing job never died"
                time.sleep(0.1)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=20) == 0
        lines = json_lines(node)
    finally:
        stop(node)
    assert not [r for r in lines if "SECRET-ARGUMENT" in json.dumps(r)]
    assert any("memory://" in r["message"] and "lost" in r["message"] for r in lines)
    started = [r for r in lines if r.get("event") == "started"]
    assert {(r["job_id"], r["task"], r["queue"], r["attempt"]) for r in started} == {
        (good, "slow", "default", 1), (retried, "slow", "default", 1),
        (retried, "slow", "default", 2)}
    done = events(lines, "succeeded")[good]
    assert done["level"] == "INFO" and 0.2 <= done["duration_s"] < 5
    retry = events(lines, "failed, retrying")[retried]
    assert retry["attempt"] == 1 and retry["retry_in_s"] >= 0
    assert retry["error"].startswith("TypeError")
    dead = events(lines, "failed, dead")[retried]
    assert dead["attempt"] == 2 and "dead-letter" in dead["message"]
    assert any(r["message"] == "drained: released 0 jobs" for r in lines)


def test_first_signal_drains_second_stops_at_once_and_releases() -> None:
    owner_port, worker_port = free_port(), free_port()
    owner = start_node(owner_port, "--name", "owner")
    procs = [owner]
    try:
        client = connect(owner_port, owner)
        client.pause()  # only the worker node leases
        worker = start_node(worker_port, "--name", "worker", "--grace", "120",
                            "--join", f"127.0.0.1:{owner_port}")
        procs.append(worker)
        connect(worker_port, worker).close()
        quick = [client.enqueue("slow", 0.5) for _ in range(2)]
        stuck = [client.enqueue("slow", 300) for _ in range(3)]
        wait_active(client, quick + stuck, "worker")
        worker.send_signal(signal.SIGINT)
        for job_id in quick:  # the drain lets running jobs finish
            assert client.wait(job_id, timeout_s=20) == worker.pid
        assert worker.poll() is None, "the first signal must drain, not stop"
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=15) == 0
        assert time.monotonic() - stopped_at < 10
        for job in [client.get(i) for i in stuck]:
            assert (job.state, job.releases, job.attempts_counted) == ("queued", 1, 0), job
        lines = json_lines(worker)
        client.close()
    finally:
        stop(*procs)
    assert set(events(lines, "released")) == set(stuck)
    assert all(r["task"] == "slow" for r in events(lines, "released").values())
    assert any(r["message"] == "drained: released 3 jobs" for r in lines)
    assert not [r for r in lines if "Traceback" in json.dumps(r)]
