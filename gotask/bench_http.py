"""`gotask bench http`: REST enqueue at a fixed request rate against a running node.

Rules of this module:
- Open loop: request i is due at `start + i / rate` whatever earlier answers did, and its
  latency counts from when it was due, so a stalled server is not hidden (no coordinated
  omission).
- It measures a node someone else started (`--url`), from its own process; it never
  starts one. A token comes from `--token-file` or `$GOTASK_HTTP_TOKEN`, never argv.
- Any answer but 201, and any transport error, counts as an error.
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

__all__ = ["main", "percentile", "summary"]


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


def main(argv: list[str]) -> int:
    """`gotask bench http --url URL [--rate N] [--duration S] [--task T --args JSON]`."""
    p = argparse.ArgumentParser(prog="gotask bench http", description=__doc__)
    p.add_argument("--url", required=True, help="the node's HTTP face, e.g. http://127.0.0.1:7451")
    p.add_argument("--token-file", metavar="PATH", help="bearer token (or $GOTASK_HTTP_TOKEN)")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--task", default="add", help="task to enqueue (default add)")
    p.add_argument("--args", default="[1, 2]", help="JSON array of arguments")
    args = p.parse_args(argv)
    body = {"task": args.task, "args": json.loads(args.args)}
    result = trio.run(run, args.url, read_token(args.token_file), args.rate, args.duration,
                      body)
    print(json.dumps(result))
    return 1 if result["errors"] else 0
