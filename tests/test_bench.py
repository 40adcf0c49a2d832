"""The benchmark's own measuring tools (gotask/bench.py)."""

from __future__ import annotations

import os

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


def test_cpu_of_a_missing_process_is_zero() -> None:
    assert bench._process_cpu_s(2**22 + 12345) == 0.0
