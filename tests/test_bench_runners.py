"""`gotask bench runners` runs both figures end to end (small numbers: not a benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT


def test_runners_bench_prints_its_figures() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "bench", "runners", "--asyncio-jobs", "200",
         "--sleep-s", "0.2", "--process-jobs", "50", "--runs", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert (result["asyncio_jobs"], result["process_jobs"], result["children"]) == (200, 50, 2)
    assert result["asyncio_all_done_s"] >= 0.2  # every job slept its 0.2 s
    assert result["process_per_job_ms"] > 0
    assert len(result["load_avg_1m"]) == len(result["python_mops"]) == 2
