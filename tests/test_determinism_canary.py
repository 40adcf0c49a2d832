"""Canary: trio's private scheduling knobs still exist and still make runs replayable.

The simulation relies on `trio._core._run._r` and `_ALLOW_DETERMINISTIC_SCHEDULING`
(see gotask/testing/sim.py). If a trio upgrade removes or changes them, these tests fail
before any simulation silently stops replaying. Run as a module to print a trace:
``python -m tests.test_determinism_canary small|network SEED``.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio._core._run as trio_run

from gotask.testing.sim import run_deterministic

ROOT = Path(__file__).resolve().parents[1]


async def _small_program() -> list[str]:
    """Six tasks whose interleaving is decided by the scheduler alone."""
    trace: list[str] = []

    async def worker(name: str) -> None:
        for i in range(20):
            trace.append(f"{name}{i}@{trio.current_time():g}")
            await trio.sleep(0.001 * (i % 3))

    async with trio.open_nursery() as nursery:
        for name in "abcdef":
            nursery.start_soon(worker, name)
    return trace


def _trace(program: str, seed: int) -> Any:
    if program == "small":
        return run_deterministic(_small_program, seed)
    from tests.transports.test_sim import _chaos

    return run_deterministic(_chaos, seed, seed)


def _trace_in_subprocess(program: str, seed: int, hash_seed: int) -> Any:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_determinism_canary", program, str(seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)


def test_trio_is_the_pinned_version() -> None:
    assert trio.__version__ == "0.35.0", "re-check the private knobs, then update the pin"


def test_private_knobs_exist_and_are_used_by_the_scheduler() -> None:
    assert isinstance(trio_run._r, random.Random)
    assert isinstance(trio_run._ALLOW_DETERMINISTIC_SCHEDULING, bool)
    source = inspect.getsource(trio_run)
    assert "if _ALLOW_DETERMINISTIC_SCHEDULING:" in source
    assert "_r.shuffle(batch)" in source


def test_run_deterministic_restores_the_knobs() -> None:
    flag, state = trio_run._ALLOW_DETERMINISTIC_SCHEDULING, trio_run._r.getstate()
    run_deterministic(_small_program, 3)
    assert flag == trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    assert trio_run._r.getstate() == state


def test_same_seed_same_trace_in_process() -> None:
    first = _trace("small", 1)
    assert first == _trace("small", 1)
    assert first != _trace("small", 2)
    assert sorted(first) == sorted(_trace("small", 2))


@pytest.mark.slow
@pytest.mark.parametrize("program", ["small", "network"])
def test_same_seed_same_trace_across_processes(program: str) -> None:
    first = _trace_in_subprocess(program, 5, hash_seed=1)
    assert first == _trace_in_subprocess(program, 5, hash_seed=2)
    assert first != _trace_in_subprocess(program, 6, hash_seed=1)
    assert first == json.loads(json.dumps(_trace(program, 5)))


if __name__ == "__main__":
    json.dump(_trace(sys.argv[1], int(sys.argv[2])), sys.stdout)
