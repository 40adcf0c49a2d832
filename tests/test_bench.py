"""The benchmarks' own measuring tools (gotask/bench.py, gotask/bench_floor.py), and
gotask/bench_queues.py on a small store."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gotask import bench


def _burn() -> int:
    return sum(i * i for i in range(300_000))


def test_cpu_meter_reports_per_job_cpu_of_each_process() -> None:
    meter = bench._CpuMeter(os.getpid(), "memory://")  # this process plays the node too
    _burn()
    used = meter.per_job_us(10)
    assert set(used) == {"client", "node", "storage"}
    assert used["client"] > 0 and used["node"] >= 0
    assert used["storage"] == 0.0  # memory storage runs inside the node
    assert meter.per_job_us(10)["client"] < used["client"]  # counted from the last call


def test_steal_is_the_share_of_stolen_ticks() -> None:
    assert bench.steal_pct((10, 1000), (40, 1200)) == 15.0
    assert bench.steal_pct((10, 1000), (10, 1000)) is None  # no time passed
    assert bench.steal_pct(None, (10, 1000)) is None
    ticks = bench.cpu_ticks()
    if ticks is not None:  # Linux
        assert 0 <= ticks[0] <= ticks[1]


def test_cpu_of_a_missing_process_is_zero() -> None:
    assert bench._process_cpu_s(2**22 + 12345) == 0.0


def test_job_bench_prints_the_keys_the_issue_names() -> None:
    import json
    import subprocess
    import sys

    from tests.processes import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "bench", "--storage", "memory://", "--jobs", "300",
         "--concurrency", "8", "--pickup-samples", "5", "--runs", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert {"storage", "jobs", "concurrency", "enqueue_jobs_per_s", "drain_jobs_per_s",
            "pickup_p50_ms", "pickup_p99_ms", "rss_mb"} <= set(result)
    assert (result["jobs"], result["concurrency"]) == (300, 8)
    assert result["enqueue_concurrency"] == 8  # follows --concurrency unless given
    assert result["enqueue_jobs_per_s"] > 0 and result["drain_jobs_per_s"] > 0
    assert 0 < result["pickup_p50_ms"] <= result["pickup_p99_ms"]
    assert result["samples"]["drain_jobs_per_s"] == [result["drain_jobs_per_s"]]  # one run
    assert set(result["samples"]) == {"enqueue_jobs_per_s", "drain_jobs_per_s", "pickup_p99_ms"}
    assert "cpu_steal_pct" in result


def test_job_bench_scrapes_the_node_when_asked() -> None:
    import json
    import subprocess
    import sys

    from tests.processes import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "bench", "--jobs", "300", "--concurrency", "8",
         "--pickup-samples", "5", "--http-scrape", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["scrapes"][0] >= 1 and result["drain_jobs_per_s"] > 0


def test_runtime_bench_prints_its_three_figures() -> None:
    import json
    import subprocess
    import sys

    from tests.processes import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "bench", "runtime", "--runs", "1",
         "--messages", "2000", "--calls", "200", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    for key in ("local_msgs_per_s", "tcp_stream_msgs_per_s", "tcp_call_round_trips_per_s",
                "call_floor_raw_round_trips_per_s", "call_floor_trio_round_trips_per_s"):
        assert result[key] > 0, key
    assert result["runs"] == 1 and len(result["samples"]["tcp_call"]) == 1
    assert len(result["samples"]["call_floor_trio"]) == 1
    assert "cpu_steal_pct" in result


@pytest.mark.parametrize("kind", ["raw", "trio"])
def test_call_floor_programs_run_and_their_child_exits(kind: str) -> None:
    from gotask.bench_floor import measure

    assert measure(kind, 50) > 0  # `measure` raises if the child does not exit


def test_call_floor_refuses_an_unknown_program() -> None:
    from gotask.bench_floor import measure

    with pytest.raises(ValueError, match="unknown floor program 'nope'"):
        measure("nope", 1)



def test_cron_bench_fires_every_entry_each_minute_at_a_tiny_size() -> None:
    from gotask.bench_cron import run_cron_bench

    result = run_cron_bench(entries=20, minutes=2, step_s=0.5)
    assert result["jobs_enqueued"] == 40  # 20 entries x 2 minutes, each tick once
    assert result["first_tick_all_enqueued_cpu_s"] is not None
    assert 0 <= result["scheduler_cpu_pct_of_core"] < 100


def test_bench_queues_times_the_queue_listing_of_stored_jobs(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from gotask import bench_queues

    result = bench_queues.main(["--jobs", "2000", "--backend", "memory"])
    assert (result["backend"], result["jobs"], result["runs"]) == ("memory", 2000, 20)
    assert 0 < result["median_ms"] <= result["max_ms"]
    assert '"median_ms"' in capsys.readouterr().out


def _bench_json(*args: str) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    from tests.processes import ROOT

    out = subprocess.run([sys.executable, "-m", "gotask.cli", "bench", *args, "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_sequential_bench_reports_rate_and_call_latency() -> None:
    result = _bench_json("--sequential", "--storage", "memory://", "--jobs", "60",
                         "--concurrency", "2", "--runs", "1")
    assert (result["mode"], result["jobs"]) == (["sequential"], 60)
    assert result["enqueue_jobs_per_s"] > 0
    assert 0 < result["enqueue_p50_ms"] <= result["enqueue_p99_ms"]
    assert not any(key.startswith("idle_") for key in result)
    assert result["samples"]["enqueue_jobs_per_s"] == [result["enqueue_jobs_per_s"]]


def test_idle_pickup_bench_reports_pickup_and_done_latency() -> None:
    result = _bench_json("--sequential", "--idle-pickup", "--storage", "memory://",
                         "--jobs", "20", "--pickup-samples", "5", "--concurrency", "2",
                         "--runs", "2")
    assert result["mode"] == ["sequential", "idle_pickup"]
    assert result["pickup_samples"] == 5 and result["runs"] == 2
    assert 0 <= result["idle_pickup_p50_ms"] <= result["idle_pickup_p99_ms"]
    assert 0 < result["idle_done_p50_ms"] <= result["idle_done_p99_ms"]
    assert result["idle_pickup_p99_ms"] <= result["idle_done_p99_ms"]
    assert len(result["samples"]["idle_done_p50_ms"]) == 2
    assert "python_mops" in result and "cpu_steal_pct" in result


def test_cron_node_bench_measures_real_nodes_at_a_tiny_size() -> None:
    """Two real node processes on memory storage, 20 entries every 6 s instead of 10,000
    minutely ones: the measured tick enqueued all 20 jobs, none before its tick."""
    from gotask.bench_cron_nodes import run_node_bench

    result = run_node_bench("memory://", entries=20, minutes=1, period_s=6)
    assert result["tick_jobs"] == 20
    assert 0 <= result["first_job_late_s"] <= result["last_job_late_s"] < 6
    assert set(result["samples"]) == {"scheduler_cpu_pct_of_core", "tick_jobs",
                                      "first_job_late_s", "last_job_late_s"}
    assert result["python_mops"] > 0 and result["load_avg_1m"] >= 0
