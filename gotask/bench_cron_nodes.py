"""`gotask bench cron --storage URL`: the Scheduler's cost and the tick's lateness with
many cron entries on real nodes (issue 15); the rules are in `gotask.bench_cron`."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
from collections.abc import Iterator
from typing import Any

import trio

from gotask._bench_cron_app import ENTRIES_ENV, EVERY_ENV
from gotask._client_async import AsyncClient
from gotask._errors import GoTaskError
from gotask._job import JobRecord
from gotask.bench import (
    _connect,
    _forget_storage,
    _fresh_storage,
    _process_cpu_s,
    _start_node,
    free_port,
    python_mops,
)
from gotask.runtime.world import World, real_world

__all__ = ["run_node_bench"]

#: Jobs per listing call: small enough to answer well within the client's timeout while
#: the node is loaded.
PAGE = 500
TRIES = 10

@contextlib.contextmanager
def _node(storage: str, entries: int, run: int,
          period_s: int) -> Iterator[tuple[int, int, str]]:
    """A node of `entries` entries firing every `period_s` seconds (60: minutely, by a
    cron expression) on a fresh store: (pid, port, url)."""
    url, port = _fresh_storage(storage, run), free_port()
    every = "" if period_s == 60 else str(period_s)
    proc = _start_node(url, 1, port, app="gotask._bench_cron_app",
                       env={ENTRIES_ENV: str(entries), EVERY_ENV: every})
    try:
        yield proc.pid, port, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _forget_storage(url)


async def _lateness(client: AsyncClient, ticks: list[float],
                   period_s: int) -> tuple[list[int], list[float], list[float]]:
    """Per tick: how many jobs it enqueued, its first and last job's lateness (s)."""
    created: list[list[float]] = [[] for _ in ticks]
    after: str | None = None
    while True:
        page = await _list_page(client, after)
        for job in page:
            for i, tick in enumerate(ticks):
                if tick <= job.created_at < tick + period_s:
                    created[i].append(job.created_at)
        if len(page) < PAGE:
            break
        after = page[-1].id
    return ([len(c) for c in created],
            [min(c) - t if c else math.nan for c, t in zip(created, ticks, strict=True)],
            [max(c) - t if c else math.nan for c, t in zip(created, ticks, strict=True)])


async def _list_page(client: AsyncClient, after: str | None) -> list[JobRecord]:
    """One page of queued jobs; a node still busy with its tick may not answer within
    the client's timeout: ask again, a few times."""
    for _ in range(TRIES - 1):
        try:
            return await client.list_jobs(state="queued", limit=PAGE, after_id=after)
        except GoTaskError:
            await trio.sleep(1.0)
    return await client.list_jobs(state="queued", limit=PAGE, after_id=after)


async def _sleep_until(world: World, wall: float) -> None:
    await trio.sleep(max(0.0, wall - world.wall()))


async def _connect_patiently(port: int) -> AsyncClient:
    """A client of the node at `port`; a loaded machine may take minutes to start a node
    whose app declares 10,000 entries."""
    for _ in range(TRIES - 1):
        try:
            return await _connect(port)
        except (GoTaskError, OSError):
            await trio.sleep(1.0)
    return await _connect(port)


async def _measure(cron: tuple[int, int], idle: tuple[int, int], periods: int,
                   period_s: int, world: World) -> dict[str, Any]:
    client = await _connect_patiently(cron[1])
    idle_client = await _connect_patiently(idle[1])
    try:
        for c in (client, idle_client):
            await c.pause(True)
        # The first tick comes with registration and warm-up: start at the next one.
        half = period_s / 2
        begin = (math.floor(world.wall() / period_s) + 1) * period_s + half
        pcts: list[float] = []
        await _sleep_until(world, begin)
        used = [_process_cpu_s(pid) for pid in (cron[0], idle[0])]
        for i in range(1, periods + 1):  # windows back to back, each holding one tick
            await _sleep_until(world, begin + i * period_s)
            now = [_process_cpu_s(pid) for pid in (cron[0], idle[0])]
            pcts.append(100 * ((now[0] - used[0]) - (now[1] - used[1])) / period_s)
            used = now
        # After the windows: listing costs the node CPU.
        ticks = [begin + half + i * period_s for i in range(periods)]
        counts, firsts, lasts = await _lateness(client, ticks, period_s)
    finally:  # entered in this order: leave in the reverse one
        for c in (idle_client, client):
            await c.__aexit__(None, None, None)
    return {"scheduler_cpu_pct_of_core": pcts, "tick_jobs": counts,
            "first_job_late_s": firsts, "last_job_late_s": lasts}


def run_node_bench(storage: str, entries: int, minutes: int,
                   period_s: int = 60) -> dict[str, Any]:
    """Measure `minutes` periods of `period_s` seconds (medians, and every sample) on
    `storage`; the ticks are whole minutes unless `period_s` is less (tests)."""
    mops = python_mops()
    with _node(storage, entries, 0, period_s) as cron, _node(storage, 0, 1, period_s) as idle:
        samples = trio.run(_measure, cron[:2], idle[:2], minutes, period_s, real_world())
    out: dict[str, Any] = {"storage": storage.split("://", 1)[0], "entries": entries,
                           "minutes": minutes, "period_s": period_s}
    for key, values in samples.items():
        out[key] = round(statistics.median(values), 3)
    out["samples"] = {k: [round(v, 3) for v in vs] for k, vs in samples.items()}
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    out["python_mops"] = mops
    return out
