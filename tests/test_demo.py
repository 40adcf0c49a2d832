"""`make run`'s demo (examples/demo.py), run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import ROOT, free_port


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_demo_and_its_node(tmp_path: Path) -> None:
    env = {**os.environ, "GOTASK_DEMO_LISTEN": f"127.0.0.1:{free_port()}",
           "GOTASK_DEMO_HTTP": f"127.0.0.1:{free_port()}",
           "GOTASK_DEMO_STORAGE": f"sqlite://{tmp_path}/gotask.db"}
    demo = subprocess.Popen([sys.executable, "-m", "examples.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if "Ctrl-C stops the node" in line:
                break
        (node,) = _children(demo.pid)
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(node) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(node), "the demo's node outlived it"
    finally:
        if demo.poll() is None:
            demo.kill()


def test_ctrl_c_drains_the_demo_s_node_and_exits_0_without_a_traceback(
        tmp_path: Path) -> None:
    env = {**os.environ, "GOTASK_DEMO_LISTEN": f"127.0.0.1:{free_port()}",
           "GOTASK_DEMO_STORAGE": "memory://"}
    demo = subprocess.Popen([sys.executable, "-m", "examples.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None and demo.stderr is not None
        for line in demo.stdout:
            if "Ctrl-C stops the node" in line:
                break
        demo.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the demo
        assert demo.wait(timeout=60) == 0
        err = demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "draining" in err and "drained: released" in err
