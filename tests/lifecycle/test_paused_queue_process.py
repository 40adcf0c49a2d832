"""A paused queue in real node processes on SQLite, through the sync client: it holds
across a node restart, and its jobs run once it is resumed."""

from __future__ import annotations

import signal
from pathlib import Path

from gotask._client_admin import QueueStatus

from ..processes import connect, free_port, start_node, stop


def test_a_paused_queue_stays_paused_across_a_node_restart(tmp_path: Path) -> None:
    storage = ("--storage", f"sqlite://{tmp_path}/gotask.db")
    port = free_port()
    node = start_node("tests.web.webapp", port, *storage)
    try:
        with connect(port, node) as client:
            client.pause_queue("default")
            job_id = client.enqueue("add", 2, 3)
            assert client.get(job_id).state == "queued"
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
        node = start_node("tests.web.webapp", port, *storage)
        with connect(port, node) as client:
            [status] = client.queue_list()
            assert (status.name, status.counts, status.paused) == (
                "default", {"queued": 1}, True)
            assert status.oldest_ready_age_s is not None
            client.resume_queue("default")
            assert client.wait(job_id, timeout_s=20) == 5
            assert client.queue_list() == [
                QueueStatus("default", {"succeeded": 1}, False, None)]
    finally:
        stop(node)
