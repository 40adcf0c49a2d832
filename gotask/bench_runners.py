"""`gotask bench runners`: what asyncio tasks and process isolation cost, measured.

Rules of this module:
- One in-process node on memory storage (no TCP: the figures are the runners' own).
- asyncio: `--asyncio-jobs` jobs that each `asyncio.sleep(--sleep-s)`, on a node whose
  concurrency equals the job count; the figure is the seconds from the first enqueue to
  the last job stored as succeeded.
- process: `--process-jobs` no-op jobs with `isolation="process"` on `--children`
  children (started before the clock starts); the figure is wall time per job.
- Each figure is the median of `--runs` runs, with the load average and python_mops:
  on a shared machine the figures are floors, not ceilings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import trio

from gotask._app import App, ProcessLimits, pack_args
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import Server, open_server
from gotask.bench import python_mops, write_result
from gotask.config import NodeConfig

__all__ = ["main"]

app = App("bench-runners")
CHUNK = 1000


@app.task(loop="asyncio")
async def aio_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.task(isolation="process")
def process_noop() -> None:
    return None


async def _run_jobs(server: Server, task: str, args: list[Any], jobs: int) -> float:
    """Seconds from the first enqueue until all `jobs` succeeded."""
    began = time.perf_counter()
    ids: list[str] = []
    for start in range(0, jobs, CHUNK):
        specs = tuple(JobSpec(task, pack_args(args)) for _ in range(min(CHUNK, jobs - start)))
        ids += (await server.node.call(server.broker, Enqueue(specs))).ids
    for start in range(0, jobs, CHUNK):
        reply = await server.node.call(server.broker,
                                       WaitJobs(tuple(ids[start:start + CHUNK]), 600),
                                       timeout_s=610)
        failed = [job for job in reply.jobs if job is None or job.state != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
    return time.perf_counter() - began


async def _asyncio_run(jobs: int, sleep_s: float) -> float:
    config = NodeConfig(app=app, name="bench", listen=None, concurrency=min(jobs, 10_000))
    async with open_server(config, listen=False) as server:
        await _run_jobs(server, "aio_sleep", [0.0], 10)  # start the loop thread
        return await _run_jobs(server, "aio_sleep", [sleep_s], jobs)


async def _process_run(jobs: int, children: int) -> float:
    config = NodeConfig(app=app, name="bench", listen=None, concurrency=children * 4,
                        processes=ProcessLimits(children=children))
    async with open_server(config, listen=False) as server:
        await _run_jobs(server, "process_noop", [], children * 4)  # start the children
        return await _run_jobs(server, "process_noop", [], jobs) / jobs


def main(argv: list[str]) -> int:
    """`gotask bench runners [--asyncio-jobs N] [--process-jobs N] ...`; the exit code."""
    parser = argparse.ArgumentParser(prog="gotask bench runners")
    parser.add_argument("--asyncio-jobs", type=int, default=5000)
    parser.add_argument("--sleep-s", type=float, default=1.0)
    parser.add_argument("--process-jobs", type=int, default=2000)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before, speed_before = os.getloadavg()[0], python_mops()
    aio = [trio.run(_asyncio_run, args.asyncio_jobs, args.sleep_s) for _ in range(args.runs)]
    proc = [trio.run(_process_run, args.process_jobs, args.children) for _ in range(args.runs)]
    result = {
        "asyncio_jobs": args.asyncio_jobs, "sleep_s": args.sleep_s,
        "asyncio_all_done_s": round(statistics.median(aio), 3),
        "process_jobs": args.process_jobs, "children": args.children,
        "process_per_job_ms": round(statistics.median(proc) * 1000, 3),
        "load_avg_1m": [load_before, os.getloadavg()[0]],
        "python_mops": [speed_before, python_mops()],
        "samples": {"asyncio_all_done_s": [round(s, 3) for s in aio],
                    "process_per_job_ms": [round(s * 1000, 3) for s in proc]},
    }
    write_result(result, args.json)
    return 0

