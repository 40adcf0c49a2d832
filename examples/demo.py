"""What `make run` runs: a node with the example tasks, and a few demo jobs.

It starts `gotask node --app examples.tasks` on 127.0.0.1:7450 (REST API on
http://127.0.0.1:7451/api/v1, `GOTASK_DEMO_HTTP` picks another address) with SQLite storage in
`./.gotask/gotask.db` (jobs survive a restart of the node; `GOTASK_DEMO_STORAGE` picks
another store, e.g. `memory://`), enqueues a job that reports progress, one that fails
twice then succeeds, and one that ends in the dead-letter queue, prints how to look at
them, and keeps the node running until Ctrl-C or SIGTERM (which drain it gracefully).

If the address is taken (another node from an earlier `make run`), it says so in one line
and exits 1, rather than enqueuing onto whatever answers there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import gotask

ADDRESS = os.environ.get("GOTASK_DEMO_LISTEN", "127.0.0.1:7450")
HTTP = os.environ.get("GOTASK_DEMO_HTTP", "127.0.0.1:7451")
STORAGE = os.environ.get("GOTASK_DEMO_STORAGE", "sqlite://.gotask/gotask.db")


NAME = f"demo-{os.getpid()}"


def check_port_free() -> None:
    """Exit with one line when something already listens on ADDRESS."""
    host, _, port = ADDRESS.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise SystemExit(
                f"make run: error: {ADDRESS} is in use ({exc.strerror}); stop the process "
                "listening there (an earlier `make run`?) or set GOTASK_DEMO_LISTEN="
                "127.0.0.1:PORT") from None


def start_node() -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gotask.cli", "node", "--app", "examples.tasks",
           "--listen", ADDRESS, "--http", HTTP, "--storage", STORAGE, "--concurrency", "16",
           "--name", NAME]
    # Its own session: a Ctrl-C in the terminal reaches only the demo, which passes each
    # one on, so the node sees one signal per press (the second stops it at once).
    return subprocess.Popen(cmd, start_new_session=True)


def connect(node: subprocess.Popen[bytes]) -> gotask.Client:
    deadline = time.monotonic() + 30
    while True:
        if node.poll() is not None:
            raise SystemExit(f"the node did not start (exit code {node.poll()})")
        client = gotask.Client([ADDRESS], connect_rounds=1)
        try:
            if NAME in {n.node for n in client.nodes()}:  # ours, not another node
                return client
            client.close()
        except gotask.GoTaskError:
            client.close()
        if time.monotonic() > deadline:
            raise SystemExit(f"make run: error: the node did not start within 30 s on {ADDRESS}")
        time.sleep(0.2)


def enqueue_demo_jobs(client: gotask.Client) -> dict[str, str]:
    return {
        "progress": client.enqueue("resize_image", "cat.png", steps=10),
        "retries then succeeds": client.enqueue("flaky_fetch", "https://example.com"),
        "ends in the DLQ": client.enqueue("charge_card", 42),
    }


def explain(jobs: dict[str, str]) -> None:
    gt = ".venv/bin/gotask"
    lines = ["", f"GoTask node running on {ADDRESS} with the tasks in examples/tasks.py,",
             f"storing jobs in {STORAGE} (see docs/sqlite.md).", ""]
    lines += [f"  {what:24} {job_id}" for what, job_id in jobs.items()]
    first = next(iter(jobs.values()))
    dead = jobs["ends in the DLQ"]
    lines += [
        "",
        "Look at them from another terminal:",
        f"  {gt} job {first} --wait        # live progress bar",
        f"  {gt} job {jobs['retries then succeeds']} --json  # attempts and backoff timestamps",
        f"  {gt} queues",
        f"  {gt} dlq list",
        f"  {gt} dlq retry {dead}",
        f"  {gt} enqueue add --args '[2, 3]' --wait",
        "",
        f"Web console: http://{HTTP}/console/ (open on loopback; docs/console.md)",
        f"REST API: http://{HTTP}/api/v1 (try curl http://{HTTP}/api/v1/queues;"
        " docs/http.md)",
        "",
        "Ctrl-C stops the node (running jobs get a grace period to finish).",
        "",
    ]
    print("\n".join(lines), flush=True)


def main() -> int:
    check_port_free()
    node = start_node()
    # A SIGTERM (a supervisor, `timeout make run`) is passed on to the node, as Ctrl-C is.
    signal.signal(signal.SIGTERM, lambda *_: node.send_signal(signal.SIGTERM))
    try:
        try:
            with connect(node) as client:
                explain(enqueue_demo_jobs(client))
        except KeyboardInterrupt:
            node.send_signal(signal.SIGINT)
        return wait_for(node)
    finally:
        if node.poll() is None:
            node.terminate()
            node.wait()


def wait_for(node: subprocess.Popen[bytes]) -> int:
    """Wait for the node, passing each Ctrl-C on: the first drains it, a second stops it."""
    while True:
        try:
            return node.wait()
        except KeyboardInterrupt:
            node.send_signal(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
