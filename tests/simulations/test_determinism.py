"""A run is a function of its seed: same seed, same trace; another seed, another trace.

Runs go through the CLI in separate processes with different PYTHONHASHSEEDs, as a
replay would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, hash_seed: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return subprocess.run([sys.executable, "-m", "simulations", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _trace(scenario: str, seed: int, hash_seed: int) -> str:
    done = _cli("run", scenario, "--seed", str(seed), hash_seed=hash_seed)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"seed {seed}"
    assert lines[-1].startswith("trace ") and len(lines[-1]) == len("trace ") + 64
    return lines[-1]


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    first = _trace("network_chaos", 11, hash_seed=1)
    assert first == _trace("network_chaos", 11, hash_seed=2)
    assert first != _trace("network_chaos", 12, hash_seed=1)


def test_verbose_run_prints_one_line_per_event_and_the_same_trace() -> None:
    quiet = _cli("run", "node_crash", "--seed", "4")
    loud = _cli("run", "node_crash", "--seed", "4", "-v")
    assert quiet.stdout.splitlines()[-1] == loud.stdout.splitlines()[-1]
    events = [line for line in loud.stdout.splitlines() if line[:11].strip()
              .replace(".", "").isdigit()]
    assert any("lease " in line for line in events)
    assert all(line[11:13] == "  " for line in events)


def test_a_violation_exits_1_and_prints_the_replay_command() -> None:
    done = _cli("run", "zombie_worker", "--seed", "0", "--plant", "stale-ack")
    assert done.returncode == 1
    assert "VIOLATION" in done.stdout
    replay = "replay: python -m simulations run zombie_worker --seed 0 -v --plant stale-ack"
    assert replay in done.stdout
    assert done.stdout.splitlines()[-1].startswith("trace ")


def test_list_and_a_small_sweep() -> None:
    listed = _cli("list")
    assert listed.returncode == 0 and "partition" in listed.stdout
    swept = _cli("sweep", "--seeds", "1", "--scenario", "partition", "--jobs", "1")
    assert swept.returncode == 0, swept.stdout
    assert "runs 1  failures 0" in swept.stdout
