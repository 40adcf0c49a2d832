"""`gotask bench console`: a tiny run against real node processes."""

from __future__ import annotations

import json

import pytest

from gotask import bench_console

pytestmark = pytest.mark.slow


def test_a_tiny_run_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_console.main(["--jobs", "3000", "--samples", "2", "--drain-jobs", "2000",
                               "--consoles", "3", "--runs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["overview"]["jobs_stored"] == 3000
    for path in bench_console.PAGES:
        page = result["overview"]["pages"][path]
        assert 0 < page["median_ms"] <= page["max_ms"]
    (without, with_consoles), = result["drain"]["runs"]
    assert (without["consoles"], with_consoles["consoles"]) == (0, 3)
    assert without["drain_jobs_per_s"] > 0 and with_consoles["drain_jobs_per_s"] > 0
    assert len(result["python_mops"]) == len(result["load_avg_1m"]) == 2
