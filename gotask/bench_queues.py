"""How long storage takes to answer `GET /api/v1/queues` with many jobs stored (issue 16).

Rules of this module:
- `python -m gotask.bench_queues [--jobs N] [--backend memory|redis] [--redis-url URL]`
  stores N queued jobs over 10 queues and 3 priorities, then times, 20 times each, the
  two storage commands one `CountQueues` costs (`CountJobs`, then `QueueInfo`, which
  holds the paused queues and each queue's oldest ready job). It prints one JSON line:
  the median and worst milliseconds, the load average and `python_mops`.
- A shared machine gives floors, not ceilings. The Redis run uses a prefix of its own and
  deletes it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from gotask._job import NewJob
from gotask.actors.storage._redis_backend import RedisBackend, RedisSettings
from gotask.actors.storage.base import CountJobs, EnqueueJobs, QueueInfo
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.actors.storage.redis import delete_prefix
from gotask.bench import python_mops
from gotask.runtime.world import encode_id

__all__ = ["main"]

_BATCH = 10_000
_RUNS = 20


def _batches(jobs: int) -> list[EnqueueJobs]:
    out = []
    for start in range(0, jobs, _BATCH):
        out.append(EnqueueJobs(tuple(
            NewJob(id=encode_id(i + 1), task="bench.noop", queue=f"q{i % 10}",
                   args=b"\x92\x90\x80", priority=i % 3)
            for i in range(start, min(jobs, start + _BATCH)))))
    return out


def _memory(jobs: int) -> list[float]:
    core, now = MemoryStorageCore(), 1_700_000_000.0
    for i, batch in enumerate(_batches(jobs)):
        core.handle(batch, now + i)
    times = []
    for _ in range(_RUNS):
        started = time.perf_counter()
        core.handle(CountJobs(), now)
        core.handle(QueueInfo(), now)
        times.append(time.perf_counter() - started)
    return times


async def _redis(jobs: int, url: str) -> list[float]:
    url = f"{url}{'&' if '?' in url else '?'}prefix=gotask-bench-queues-{os.getpid()}"
    backend = RedisBackend(RedisSettings.from_url(url))
    await backend.open(subscribe=False)
    try:
        for batch in _batches(jobs):
            await backend.execute([batch], None)
        times = []
        for _ in range(_RUNS):
            started = time.perf_counter()
            await backend.execute([CountJobs()], None)
            await backend.execute([QueueInfo()], None)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await backend.close()
        delete_prefix(url)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement and print (and return) its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m gotask.bench_queues")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["memory", "redis"], default="memory")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args(argv)
    mops = python_mops()
    if args.backend == "memory":
        times = _memory(args.jobs)
    else:
        times = asyncio.run(_redis(args.jobs, args.redis_url))
    result = {"backend": args.backend, "jobs": args.jobs,
              "median_ms": round(statistics.median(times) * 1000, 3),
              "max_ms": round(max(times) * 1000, 3), "runs": _RUNS,
              "loadavg": os.getloadavg(), "python_mops": [mops, python_mops()]}
    print(json.dumps(result))  # the benchmark's output
    return result


if __name__ == "__main__":
    main()
