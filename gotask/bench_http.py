"""`gotask bench http`: REST enqueue at a fixed request rate against a running node, and
the answer time of a GET (`/metrics`, `/api/v1/queues`) over a store filled first.

Rules of this module:
- Open loop: request i is due at `start + i / rate` whatever earlier answers did, and its
  latency counts from when it was due, so a stalled server is not hidden (no coordinated
  omission).
- It measures a node someone else started (`--url`), from its own process; it never
  starts one. A token comes from `--token-file` or `$GOTASK_HTTP_TOKEN`, never argv.
- Any answer but 201, and any transport error, counts as an error.
- `--fill N --queues Q` first enqueues N jobs over Q queues (`bench-0` ...), in batches
  of `FILL_BATCH` through `POST /api/v1/jobs/batch`; they stay ready (queued) as long
  as the node works none of those queues. `--get PATH` then times `--count` GETs of
  PATH one after another (closed loop: an answer time, not a rate) instead of the
  enqueue run.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import httpx
import trio

from gotask.web.serve import read_token

__all__ = ["fill", "main", "percentile", "summary", "time_gets"]

#: Jobs per fill request (the API's batch limit).
FILL_BATCH = 10_000


def percentile(sorted_s: Sequence[float], q: float) -> float:
    """The nearest-rank `q` percentile (0-100) of ascending values (NaN when empty)."""
    if not sorted_s:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_s)))
    return sorted_s[rank - 1]


def summary(latencies_s: list[float], errors: int, elapsed_s: float) -> dict[str, Any]:
    """Counts, achieved rate and latency percentiles in milliseconds."""
    done = sorted(latencies_s)
    return {"requests": len(done) + errors, "errors": errors,
            "rate_per_s": round((len(done) + errors) / elapsed_s, 1) if elapsed_s else 0.0,
            **{f"p{q}_ms": round(percentile(done, q) * 1000, 2) for q in (50, 95, 99)},
            "max_ms": round(done[-1] * 1000, 2) if done else math.nan}


async def run(url: str, token: bytes | None, rate: float, duration_s: float,
              body: dict[str, Any]) -> dict[str, Any]:
    """Send `rate` enqueues per second for `duration_s` seconds; the summary."""
    headers = {"Authorization": f"Bearer {token.decode()}"} if token else {}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=30) as client:

        async def one(due: float) -> None:
            nonlocal errors
            try:
                r = await client.post("/api/v1/jobs", json=body)
                ok = r.status_code == 201
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(trio.current_time() - due)
            else:
                errors += 1

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(int(rate * duration_s)):
                due = start + i / rate
                await trio.sleep_until(due)
                nursery.start_soon(one, due)
        return summary(latencies, errors, trio.current_time() - start)


def _client(url: str, token: bytes | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token.decode()}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=300)


async def fill(url: str, token: bytes | None, jobs: int, queues: int,
               body: dict[str, Any]) -> float:
    """Enqueue `jobs` copies of `body` spread over `queues` queues (`bench-0` ...); the
    seconds it took."""
    start = trio.current_time()
    async with _client(url, token) as client:
        for first in range(0, jobs, FILL_BATCH):
            batch = [body | {"queue": f"bench-{i % queues}"}
                     for i in range(first, min(jobs, first + FILL_BATCH))]
            r = await client.post("/api/v1/jobs/batch", json={"jobs": batch})
            r.raise_for_status()
    return trio.current_time() - start


async def time_gets(url: str, token: bytes | None, path: str, count: int) -> dict[str, Any]:
    """`count` GETs of `path`, one after another: their answer times (and the bytes of
    the last answer)."""
    latencies: list[float] = []
    errors, size = 0, 0
    start = trio.current_time()
    async with _client(url, token) as client:
        for _ in range(count):
            began = trio.current_time()
            r = await client.get(path)
            if r.status_code == 200:
                latencies.append(trio.current_time() - began)
                size = len(r.content)
            else:
                errors += 1
    return {"path": path, **summary(latencies, errors, trio.current_time() - start),
            "bytes": size}


def main(argv: list[str]) -> int:
    """`gotask bench http --url URL [--rate N] [--duration S] [--task T --args JSON]
    [--fill N --queues Q] [--get PATH --count N]`."""
    p = argparse.ArgumentParser(prog="gotask bench http", description=__doc__)
    p.add_argument("--url", required=True, help="the node's HTTP face, e.g. http://127.0.0.1:7451")
    p.add_argument("--token-file", metavar="PATH", help="bearer token (or $GOTASK_HTTP_TOKEN)")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--task", default="add", help="task to enqueue (default add)")
    p.add_argument("--args", default="[1, 2]", help="JSON array of arguments")
    p.add_argument("--fill", type=int, default=0, help="jobs to store first")
    p.add_argument("--queues", type=int, default=1, help="queues the filled jobs go to")
    p.add_argument("--get", metavar="PATH", help="time GETs of PATH instead of enqueues")
    p.add_argument("--count", type=int, default=50, help="GETs to time")
    args = p.parse_args(argv)
    body = {"task": args.task, "args": json.loads(args.args)}
    token = read_token(args.token_file)
    filled = {}
    if args.fill:
        took = trio.run(fill, args.url, token, args.fill, args.queues, body)
        filled = {"filled": args.fill, "queues": args.queues, "fill_s": round(took, 1)}
    if args.get:
        result = trio.run(time_gets, args.url, token, args.get, args.count)
    else:
        result = trio.run(run, args.url, token, args.rate, args.duration, body)
    print(json.dumps(filled | result))
    return 1 if result["errors"] else 0
