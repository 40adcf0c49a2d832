"""Helpers for tests that run real `gotask node` processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import gotask

ROOT = Path(__file__).resolve().parents[1]
#: Short leases and heartbeats, so that fault tests see expiry within seconds.
FAST_LEASES = ("--lease-timeout", "2", "--heartbeat", "0.5", "--grace", "1")


#: Job lines at INFO would fill the stderr pipe nobody reads; tests that read it pass
#: `--log-level INFO` in `extra` (a later flag wins).
QUIET = ("--log-level", "WARNING")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_node(app: str, port: int, *extra: str,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `gotask node --app APP` on 127.0.0.1:PORT with FAST_LEASES and `extra`."""
    cmd = [sys.executable, "-m", "gotask.cli", "node", "--app", app,
           "--listen", f"127.0.0.1:{port}", *FAST_LEASES, *QUIET, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=None if env is None else dict(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def connect(port: int, node: subprocess.Popen[bytes]) -> gotask.Client:
    """A client of the node on PORT, once it answers (its stderr if it died first)."""
    deadline = time.monotonic() + 20
    while True:
        client = gotask.Client([f"127.0.0.1:{port}"], connect_rounds=1)
        try:
            client.queues()
            return client
        except gotask.GoTaskError:
            client.close()
            assert node.poll() is None, node.stderr.read() if node.stderr else b""
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.1)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """Kill what still runs and reap every process."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
