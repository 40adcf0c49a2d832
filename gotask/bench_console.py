"""`gotask bench console`: what the web console costs, measured on node processes.

Rules of this module:
- Every phase starts a fresh node process (`gotask node --app examples.tasks --http`,
  memory storage unless `--storage`), on loopback without a token (the console is open
  there); this process is the browser's stand-in. Another `--storage` must name an empty
  store of its own, and serves phase 1 only: the drains need a fresh store each.
- Phase 1 stores `--jobs` no-op jobs with the workers paused (batches of 10,000), then
  fetches the overview, the queues page and a page of the jobs list `--samples` times
  each, one request at a time: their response times on loopback, an upper bound of the
  server's time.
- Phase 2 drains `--drain-jobs` no-op jobs on one node with no console open, and on
  another with `--consoles` overview websockets open, each reading every push: drain
  jobs/s from the jobs' own timestamps (as `gotask bench` does), and the cost as the
  relative loss.
- The machine's speed (`python_mops`) and load average come with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from gotask._client_async import AsyncClient
from gotask.bench import _connect, _drain_rate, _free_port, python_mops

__all__ = ["main"]

BATCH = 10_000
PAGES = ("/console/", "/console/queues", "/console/jobs")


def _start(storage: str, port: int, http_port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gotask.cli", "node", "--app", "examples.tasks",
           "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http_port}",
           "--storage", storage, "--concurrency", "256", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _store(client: AsyncClient, jobs: int) -> None:
    """Store `jobs` no-op jobs with the workers paused, four batches in flight."""
    await client.pause(True)
    sizes = [min(BATCH, jobs - i) for i in range(0, jobs, BATCH)]

    async def sender(mine: list[int]) -> None:
        for size in mine:
            await client.enqueue_many([("noop", (), None, None)] * size)

    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(sender, sizes[k::4])


async def _page_times(url: str, samples: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for path in PAGES:
            times = []
            for _ in range(samples):
                start = time.perf_counter()
                r = await http.get(path)
                times.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
            times.sort()
            out[path] = {"median_ms": round(statistics.median(times), 1),
                         "max_ms": round(times[-1], 1)}
    return out


async def _overview_phase(args: argparse.Namespace) -> dict[str, Any]:
    port, http_port = _free_port(), _free_port()
    node = _start(args.storage, port, http_port)
    try:
        client = await _connect(port)
        start = time.perf_counter()
        await _store(client, args.jobs)
        stored_s = time.perf_counter() - start
        await client.__aexit__(None, None, None)
        pages = await _page_times(f"http://127.0.0.1:{http_port}", args.samples)
        return {"jobs_stored": args.jobs, "store_s": round(stored_s, 1), "pages": pages}
    finally:
        node.terminate()
        node.wait(timeout=60)


async def _drain(args: argparse.Namespace, consoles: int) -> dict[str, Any]:
    port, http_port = _free_port(), _free_port()
    node = _start(args.storage, port, http_port)
    pushes = 0
    try:
        client = await _connect(port)
        await _store(client, args.drain_jobs)
        url = f"ws://127.0.0.1:{http_port}/console/ws"

        async def console(task_status: trio.TaskStatus[None]) -> None:
            nonlocal pushes
            async with open_websocket_url(url) as ws:
                await ws.get_message()  # the history
                task_status.started()
                while True:
                    await ws.get_message()
                    pushes += 1

        async with trio.open_nursery() as nursery:
            for _ in range(consoles):
                await nursery.start(console)
            await client.pause(False)
            while (await client.queues()).get("default", {}).get("succeeded", 0) \
                    < args.drain_jobs:
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        rate = await _drain_rate(client, args.drain_jobs)
        await client.__aexit__(None, None, None)
        return {"consoles": consoles, "drain_jobs_per_s": round(rate), "pushes": pushes}
    finally:
        node.terminate()
        node.wait(timeout=60)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    speed, load = python_mops(), os.getloadavg()[0]
    result: dict[str, Any] = {"storage": args.storage}
    if args.jobs:
        result["overview"] = await _overview_phase(args)
    if args.drain_jobs:
        runs = [[await _drain(args, n) for n in (0, args.consoles)] for _ in range(args.runs)]
        base = statistics.median(r[0]["drain_jobs_per_s"] for r in runs)
        loaded = statistics.median(r[1]["drain_jobs_per_s"] for r in runs)
        result["drain"] = {"runs": runs, "median_without": base, "median_with": loaded,
                           "cost_pct": round(100 * (1 - loaded / base), 1)}
    result["python_mops"] = [speed, python_mops()]
    result["load_avg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return result


def main(argv: list[str]) -> int:
    """`gotask bench console [--jobs N] [--samples N] [--drain-jobs N] [--consoles N]`."""
    p = argparse.ArgumentParser(prog="gotask bench console", description=__doc__)
    p.add_argument("--storage", default="memory://")
    p.add_argument("--jobs", type=int, default=1_000_000, help="jobs stored for phase 1 (0: skip)")
    p.add_argument("--samples", type=int, default=20, help="requests per page in phase 1")
    p.add_argument("--drain-jobs", type=int, default=100_000, help="jobs of phase 2 (0: skip)")
    p.add_argument("--consoles", type=int, default=50, help="open consoles in phase 2")
    p.add_argument("--runs", type=int, default=3, help="drain pairs in phase 2 (median)")
    args = p.parse_args(argv)
    if args.drain_jobs and not args.storage.startswith("memory://"):
        p.error("the drain phase needs memory:// (pass --drain-jobs 0 with another storage)")
    sys.stdout.write(json.dumps(trio.run(_run, args), indent=2) + "\n")
    return 0
