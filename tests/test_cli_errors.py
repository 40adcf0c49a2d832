"""The first hour's mistakes, made with the real `gotask` command against a real node.

Each case runs the CLI in a subprocess, as a user does, and checks the exit code of
docs/cli.md and a single line on stderr that names the cause (no traceback).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import ROOT, connect, free_port, start_node, stop

pytestmark = pytest.mark.slow


def gotask(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gotask.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in run.stderr.splitlines() if " ERROR " not in line
             and " WARNING " not in line and " INFO " not in line]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    port = free_port()
    proc = start_node("examples.tasks", port)
    try:
        connect(port, proc).close()
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.mark.parametrize(("argv", "words"), [
    (["enqueue", "add", "--max-attempts", "0"], "--max-attempts must be 1-1000"),
    (["enqueue", "add", "--priority", "99999999999"], "--priority must be a signed 32-bit"),
    (["enqueue", "add", "--queue", ""], "--queue must be 1-128 characters"),
    (["dlq", "list", "--limit", "0"], "--limit: expected a whole number >= 1"),
])
def test_bad_values_are_usage_errors(node: str, argv: list[str], words: str) -> None:
    run = gotask(*argv, "--node", node)
    assert run.returncode == 2
    assert words in one_line(run)


def test_an_unknown_task_names_the_close_ones(node: str) -> None:
    run = gotask("enqueue", "resize_imag", "--args", '["a.png"]', "--node", node)
    assert run.returncode == 1
    assert "did you mean 'resize_image'?" in one_line(run)


def test_a_documented_task_name_works(node: str) -> None:
    run = gotask("enqueue", "add", "--args", "[2, 3]", "--wait", "--node", node)
    assert (run.returncode, run.stdout.strip()) == (0, "5"), run.stderr


@pytest.mark.parametrize("action", ["retry", "purge"])
def test_dlq_action_on_an_unknown_id_exits_1(node: str, action: str) -> None:
    run = gotask("dlq", action, "01NOTAJOB", "--node", node)
    assert run.returncode == 1
    assert "not in the dead-letter queue" in one_line(run)


def test_json_never_prints_nan(node: str) -> None:
    run = gotask("enqueue", "add", "--args", "[NaN, 1]", "--wait", "--json", "--node", node)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout, parse_constant=pytest.fail)["result"] == "NaN"


def test_listen_on_a_busy_port(node: str) -> None:
    run = gotask("node", "--app", "examples.tasks", "--listen", node)
    assert run.returncode == 1
    assert "the address is in use" in one_line(run)


def test_an_unreachable_join_is_one_line() -> None:
    run = gotask("node", "--app", "examples.tasks", "--listen", "127.0.0.1:0",
                 "--join", f"127.0.0.1:{free_port()}")
    assert run.returncode == 1
    assert "cannot reach the node to join" in one_line(run)


def test_a_redis_database_out_of_range() -> None:
    url = os.environ.get("GOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {url} ({exc}); set GOTASK_TEST_REDIS_URL")
    run = gotask("node", "--app", "examples.tasks", "--listen", "127.0.0.1:0",
                 "--storage", url.rsplit("/", 1)[0] + "/99999")
    assert run.returncode == 1
    assert "check the database number" in one_line(run)


def test_a_non_gotask_peer_is_named() -> None:
    with socket.socket() as server:  # an HTTP server's first answer
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with subprocess.Popen([sys.executable, "-c", _HTTP, str(server.fileno())],
                              pass_fds=[server.fileno()]) as http:
            try:
                run = gotask("queues", "--node", f"127.0.0.1:{port}")
            finally:
                http.kill()
    assert run.returncode == 1
    line = one_line(run)
    assert "this is not a GoTask node" in line and "bytes" not in line


_HTTP = """
import socket, sys
server = socket.socket(fileno=int(sys.argv[1]))
while True:
    conn, _ = server.accept()
    conn.recv(100)
    conn.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")
    conn.close()
"""


def test_a_silent_port_fails_after_one_handshake_timeout() -> None:
    with socket.socket() as server:  # accepts, never answers: what Redis does
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        run = gotask("queues", "--node", f"127.0.0.1:{port}")
        took = time.monotonic() - started
    assert run.returncode == 1
    assert "this is not a GoTask node" in one_line(run)
    assert took < 9, f"took {took:.1f}s: retried a port that is not a GoTask node"


def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("import gotask\napp = 1 / 0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    argv = [sys.executable, "-m", "gotask.cli", "node", "--app", "brokenapp",
            "--listen", "127.0.0.1:0"]
    quiet = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 1
    assert "ZeroDivisionError" in one_line(quiet)
    loud = subprocess.run([*argv, "--debug"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" in loud.stderr


def test_make_run_refuses_a_busy_port(node: str) -> None:
    env = {**os.environ, "GOTASK_DEMO_LISTEN": node, "GOTASK_DEMO_STORAGE": "memory://"}
    run = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"{node} is in use" in one_line(run)


def test_a_queue_no_live_node_works_is_pointed_out(node: str) -> None:
    run = gotask("enqueue", "add", "--args", "[1, 2]", "--queue", "nobody-works-this",
                 "--node", node)
    assert run.returncode == 0, run.stderr
    assert "no live node works queue 'nobody-works-this'" in one_line(run)
    served = gotask("enqueue", "add", "--args", "[1, 2]", "--node", node)
    assert (served.returncode, served.stderr) == (0, "")
    table = gotask("queues", "--node", node)
    assert table.returncode == 0
    rows = {line.split()[0]: line.split()[-3:-1] for line in table.stdout.splitlines()}
    assert rows["nobody-works-this"] == ["0", "no"] and rows["default"] == ["1", "no"]
    assert "no live node works queue 'nobody-works-this'" in one_line(table)
