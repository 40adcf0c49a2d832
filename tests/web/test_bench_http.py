"""`gotask bench http`: its percentile arithmetic, and a tiny run against a live node."""

from __future__ import annotations

import math

import httpx

from gotask import bench_http
from gotask._server import Server

from .conftest import TOKEN


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]
    assert bench_http.percentile(values, 95) == 0.095
    assert bench_http.percentile(values, 99) == 0.099
    assert bench_http.percentile(values, 100) == 0.1
    assert math.isnan(bench_http.percentile([], 50))
    s = bench_http.summary([0.002, 0.001], errors=1, elapsed_s=1.5)
    assert (s["requests"], s["errors"], s["rate_per_s"], s["p50_ms"]) == (3, 1, 2.0, 1.0)


async def test_a_short_run_enqueues_every_job(server: Server, http: httpx.AsyncClient) -> None:
    result = await bench_http.run(str(server.http_url), TOKEN.encode(), rate=40,
                                  duration_s=0.5, body={"task": "add", "args": [1, 2]})
    assert (result["requests"], result["errors"]) == (20, 0)
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    page = (await http.get("/api/v1/jobs", params={"limit": 100})).json()
    assert len(page["jobs"]) == 20


async def test_errors_are_counted(server: Server) -> None:
    result = await bench_http.run(str(server.http_url), b"wrong-token-0123456789", rate=20,
                                  duration_s=0.25, body={"task": "add", "args": [1, 2]})
    assert (result["requests"], result["errors"]) == (5, 5)


async def test_fill_spreads_delayed_jobs_and_gets_are_timed(server: Server,
                                                           http: httpx.AsyncClient) -> None:
    await bench_http.fill(str(server.http_url), TOKEN.encode(), jobs=30, queues=3,
                          body={"task": "add", "args": [1, 2]})
    queues = (await http.get("/api/v1/queues")).json()
    result = await bench_http.time_gets(str(server.http_url), TOKEN.encode(),
                                        "/api/v1/queues", count=5)
    assert (result["requests"], result["errors"]) == (5, 0) and result["bytes"] > 0
    assert 0 < result["p50_ms"] <= result["max_ms"]
    ready = {q["name"]: q["counts"].get("queued") for q in queues["queues"]}
    assert ready == {"bench-0": 10, "bench-1": 10, "bench-2": 10}  # nobody works them
