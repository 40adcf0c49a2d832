"""Schemathesis against a live node process over a real socket, with auth: every
operation of docs/openapi.json, no 5xx and no response outside the schema."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(url: str, node: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert node.poll() is None, "the node exited"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the node's HTTP face did not come up")


def test_schemathesis_finds_no_failures(tmp_path: Path) -> None:
    http = f"127.0.0.1:{_free_port()}"
    # The node's job lines go to a file: a pipe nobody reads fills up and blocks the node.
    env = {**os.environ, "GOTASK_HTTP_TOKEN": TOKEN}
    log = (tmp_path / "node.log").open("wb")
    node = subprocess.Popen(
        [sys.executable, "-m", "gotask.cli", "node", "--app", "tests.web.webapp",
         "--listen", f"127.0.0.1:{_free_port()}", "--http", http, "--concurrency", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait_healthy(f"http://{http}", node)
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run",
             str(ROOT / "docs" / "openapi.json"), "--url", f"http://{http}",
             "-H", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS,
             "--max-examples", "10", "--workers", "1", "--request-timeout", "60",
             "--phases", "examples,coverage,fuzzing",
             "--seed", "16"],
            cwd=tmp_path, capture_output=True, text=True, timeout=150)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        operations = sum(len(ops) for ops in json.loads(
            (ROOT / "docs" / "openapi.json").read_text())["paths"].values())
        assert f"Tested: {operations}" in run.stdout, run.stdout[-3000:]
    finally:
        node.terminate()
        node.wait(timeout=30)
        log.close()
