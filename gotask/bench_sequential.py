"""`gotask bench --sequential` and `--idle-pickup`: one job at a time, as a web app feels it.

Rules of this module:
- The node is a child process (`gotask node --app examples.tasks`), the caller this
  process's main thread with the blocking `Client`: one caller, one job per call, the
  next call only once the previous one returned (issue 20).
- `--sequential` enqueues N no-op jobs with the node's workers paused: jobs/s, the
  latency of each call (p50, p99) as the caller sees it (`time.perf_counter`), and the
  caller's own CPU per call (the rest of a call's time is the node, storage and wire).
- `--idle-pickup` resumes the workers and enqueues one no-op job at a time into the idle
  node, waiting for each to finish and pausing `IDLE_GAP_S` between them: pickup is the
  job's creation to its lease, done its creation to its acknowledgement, both read from
  the job's own timestamps (the storage clock).
- Each run gets a fresh node and a fresh store (as `gotask bench`); medians over runs,
  every run's figures in `samples`, the machine's speed and CPU steal beside them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Final

from gotask._client_sync import Client
from gotask._errors import GoTaskError
from gotask.bench import cpu_ticks, free_port, node_session, python_mops, steal_pct

__all__ = ["run_sequential_bench"]

#: Seconds between two idle-pickup jobs, so that each finds the node idle.
IDLE_GAP_S: Final = 0.02


def _connect(port: int) -> Client:
    deadline = time.monotonic() + 30
    client = Client([f"127.0.0.1:{port}"], connect_rounds=1)
    while True:
        try:
            client.queues()
            return client
        except (GoTaskError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _enqueue_phase(client: Client, jobs: int) -> dict[str, float]:
    latencies = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(jobs):
        began = time.perf_counter()
        client.enqueue("noop")
        latencies.append((time.perf_counter() - began) * 1000)
    rate = jobs / (time.perf_counter() - start)
    return {"enqueue_jobs_per_s": rate, "enqueue_p50_ms": statistics.median(latencies),
            "enqueue_p99_ms": _percentile(latencies, 0.99),
            "enqueue_client_cpu_us": (time.process_time() - cpu_start) / jobs * 1e6}


def _pickup_phase(client: Client, samples: int) -> dict[str, float]:
    pickup, done = [], []
    for _ in range(samples):
        time.sleep(IDLE_GAP_S)
        job_id = client.enqueue("noop")
        client.wait(job_id, timeout_s=30)
        job = client.get(job_id)
        assert job.leased_at is not None and job.finished_at is not None
        pickup.append((job.leased_at - job.created_at) * 1000)
        done.append((job.finished_at - job.created_at) * 1000)
    return {"idle_pickup_p50_ms": statistics.median(pickup),
            "idle_pickup_p99_ms": _percentile(pickup, 0.99),
            "idle_done_p50_ms": statistics.median(done),
            "idle_done_p99_ms": _percentile(done, 0.99)}


def _one_run(args: argparse.Namespace, port: int) -> dict[str, float]:
    client = _connect(port)
    out: dict[str, float] = {}
    try:
        if args.sequential:
            client.pause(True)
            out.update(_enqueue_phase(client, args.jobs))
            client.pause(False)
        if args.idle_pickup:
            while client.queues().get("default", {}).get("queued", 0):
                time.sleep(0.05)  # the jobs of the enqueue phase, run first
            out.update(_pickup_phase(client, args.pickup_samples))
    finally:
        client.close()
    return out


def run_sequential_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run `args.runs` times, a fresh node and store each time; return medians and every
    run's figures."""
    samples = []
    speed_before, ticks_before = python_mops(), cpu_ticks()
    for run in range(args.runs):
        port = free_port()
        with node_session(args.storage, args.concurrency, run, port):
            samples.append(_one_run(args, port))
    result: dict[str, Any] = {"storage": args.storage, "mode": [
        name for name in ("sequential", "idle_pickup") if getattr(args, name)]}
    if args.sequential:
        result["jobs"] = args.jobs
    if args.idle_pickup:
        result["pickup_samples"] = args.pickup_samples
    for key in samples[0]:
        value = statistics.median(s[key] for s in samples)
        result[key] = round(value, 3) if key.endswith("_ms") else round(value, 1)
    result["runs"] = args.runs
    result["cpu_steal_pct"] = steal_pct(ticks_before, cpu_ticks())
    result["python_mops"] = [speed_before, python_mops()]
    result["samples"] = {key: [round(s[key], 3 if key.endswith("_ms") else 1) for s in samples]
                         for key in samples[0]}
    return result
