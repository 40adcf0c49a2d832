"""`gotask bench grpc` runs end to end (its figures go to docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.slow
def test_bench_grpc_measures_unary_and_streamed_enqueue() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "bench", "grpc", "--rate", "50", "--duration",
         "0.5", "--stream-jobs", "300", "--per-message", "1", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["unary"]["requests"] == 25 and result["unary"]["errors"] == 0
    assert result["unary"]["p95_ms"] > 0
    assert [(s["jobs"], s["per_message"]) for s in result["streamed"]] == [(300, 1), (300, 100)]
    assert all(s["jobs_per_s"] > 0 for s in result["streamed"])
    assert {"loadavg", "python_mops"} <= set(result["before"])
