"""`gotask bench`: throughput and latency of a real node, measured as users run it.

Rules of this module:
- The node is a child process (`gotask node --app examples.tasks`), the client this
  process, talking TCP on loopback: nothing is measured in-process.
- Phase 1 enqueues N no-op jobs, one call per job from `--enqueue-concurrency` callers
  of one client (default: as many as `--concurrency`, like that many request handlers
  of a web app), with the node's workers paused: enqueue jobs/s.
- Phase 2 resumes the workers: drain jobs/s from the first lease to the last ack, both
  read from the jobs' own timestamps (the storage clock), not from polling.
- Phase 3 measures pickup latency on the idle node, one no-op job at a time: from the
  job's creation to its acknowledgement, as storage recorded them. That bounds pickup
  from above: it includes the hand-off to a worker, the run and the ack round trip.
- CPU seconds per job of each process in phases 1 and 2 (this client, the node, and a
  Redis server from its `INFO cpu`) come with the rates: they tell a CPU limit from a
  latency chain, and this machine's speed from the code's cost.
- The result carries every run's figures (`samples`) beside the medians, the machine's
  speed (`python_mops`) and the share of CPU time the hypervisor gave to other guests
  during the runs (`cpu_steal_pct`, from /proc/stat): on a shared VM those tell a slow
  machine from slow code.
- `--http-scrape` serves the node's HTTP face and reads its `/metrics` every second
  during the run, as a Prometheus server would: compare with a run without it.
- `gotask bench --sequential` / `--idle-pickup` measure one job at a time from the
  blocking client (gotask.bench_sequential).
- `gotask bench runtime` measures the actor runtime itself (gotask.bench_runtime);
  `gotask bench cron` the Scheduler with many cron entries (gotask.bench_cron).
- `gotask bench http --url URL` measures REST enqueue on a running node (gotask.bench_http).
- `gotask bench grpc` measures unary and streamed enqueue through the gRPC face
  (gotask.bench_grpc).
- `gotask bench console` measures the web console's cost (gotask.bench_console).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from gotask._client_async import AsyncClient
from gotask._errors import GoTaskError

__all__ = ["cpu_ticks", "free_port", "main", "node_session", "python_mops", "run_job_bench",
           "steal_pct"]

LIST_PAGE = 2_000
#: How often `--http-scrape` reads the node's /metrics.
SCRAPE_EVERY_S = 1.0


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_node(storage: str, concurrency: int, port: int, http_port: int | None = None,
                app: str = "examples.tasks",
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gotask.cli", "node", "--app", app,
           "--listen", f"127.0.0.1:{port}", "--storage", storage,
           "--concurrency", str(concurrency)]
    if http_port is not None:
        cmd += ["--http", f"127.0.0.1:{http_port}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


@contextmanager
def node_session(storage: str, concurrency: int, run: int,
                 port: int) -> Iterator[tuple[int, str]]:
    """A node on `port` over a fresh store for run number `run` (see `_fresh_storage`);
    yields its pid and the store's URL, then stops it and forgets the store."""
    fresh = _fresh_storage(storage, run)
    node = _start_node(fresh, concurrency, port, None)
    try:
        yield node.pid, fresh
    finally:
        node.terminate()
        node.wait(timeout=60)
        _forget_storage(fresh)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


async def _connect(port: int) -> AsyncClient:
    deadline = trio.current_time() + 30
    while True:
        client = AsyncClient([f"127.0.0.1:{port}"], connect_rounds=1)
        try:
            await client.__aenter__()
            await client.queues()
            return client
        except (GoTaskError, OSError):
            await client.__aexit__(None, None, None)
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.2)


async def _enqueue_phase(client: AsyncClient, jobs: int, callers: int) -> tuple[float, list[str]]:
    ids: list[str] = []
    per_caller, extra = divmod(jobs, callers)

    async def caller(count: int) -> None:
        for _ in range(count):
            ids.append(await client.enqueue("noop"))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(caller, per_caller + (1 if i < extra else 0))
    return jobs / (time.perf_counter() - start), ids


async def _drain_rate(client: AsyncClient, jobs: int) -> float:
    first_lease, last_ack, after = float("inf"), 0.0, None
    while True:
        page = await client.list_jobs(queue="default", state="succeeded", limit=LIST_PAGE,
                                      after_id=after)
        for job in page:
            first_lease = min(first_lease, job.leased_at or first_lease)
            last_ack = max(last_ack, job.finished_at or 0.0)
        if len(page) < LIST_PAGE:
            break
        after = page[-1].id
    return jobs / max(last_ack - first_lease, 1e-9)


async def _pickup_phase(client: AsyncClient, samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        job_id = await client.enqueue("noop")
        await client.wait(job_id, timeout_s=30)
        job = await client.get(job_id)
        assert job.finished_at is not None
        latencies.append((job.finished_at - job.created_at) * 1000)
        await trio.sleep(0.01)
    return latencies


class _CpuMeter:
    """CPU seconds used by this process, the node and the storage server, per phase."""

    def __init__(self, node_pid: int, storage: str) -> None:
        self._node_pid, self._storage = node_pid, storage
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.process_time(), _process_cpu_s(self._node_pid), _storage_cpu_s(self._storage)

    def per_job_us(self, jobs: int) -> dict[str, float]:
        """Microseconds of CPU per job since the last call (or the start)."""
        now = self._read()
        used = [round((b - a) / jobs * 1e6, 1) for a, b in zip(self._start, now, strict=True)]
        self._start = now
        return dict(zip(("client", "node", "storage"), used, strict=True))


def _process_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _storage_cpu_s(storage: str) -> float:
    if storage.startswith(("postgresql://", "postgres://")):
        from gotask.actors.storage.postgres import server_cpu_s

        return server_cpu_s(storage)
    if not storage.startswith("redis"):
        return 0.0  # memory and SQLite storage run in the node
    import redis

    url = storage.split("?", 1)[0]
    info = redis.Redis.from_url(url, socket_timeout=5).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _scraped_run(args: argparse.Namespace, port: int, http_port: int | None, pid: int,
                       storage: str) -> dict[str, Any]:
    """`_one_run`, with `/metrics` of the node scraped every second meanwhile (when
    `http_port` is set), as a Prometheus server would."""
    if http_port is None:
        return await _one_run(args, port, pid, storage)
    import httpx

    scrapes = 0

    async def scrape(client: httpx.AsyncClient) -> None:
        nonlocal scrapes
        while True:
            scrapes += await _answers(client, "/metrics")
            await trio.sleep(SCRAPE_EVERY_S)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client, \
            trio.open_nursery() as nursery:
        with trio.fail_after(30):  # the node serves HTTP a moment after TCP
            while not await _answers(client, "/metrics"):
                await trio.sleep(0.1)
        nursery.start_soon(scrape, client)
        result = await _one_run(args, port, pid, storage)
        nursery.cancel_scope.cancel()
    return result | {"scrapes": scrapes}


async def _answers(client: Any, path: str) -> bool:
    import httpx

    try:
        return bool((await client.get(path)).status_code == 200)
    except httpx.HTTPError:
        return False


async def _one_run(args: argparse.Namespace, port: int, pid: int,
                   storage: str) -> dict[str, Any]:
    client = await _connect(port)
    try:
        await client.pause(True)
        meter = _CpuMeter(pid, storage)
        enqueue_rate, _ = await _enqueue_phase(client, args.jobs, args.enqueue_concurrency)
        enqueue_cpu = meter.per_job_us(args.jobs)
        await client.pause(False)
        while (await client.queues()).get("default", {}).get("succeeded", 0) < args.jobs:
            await trio.sleep(0.05)
        drain_cpu = meter.per_job_us(args.jobs)
        drain_rate = await _drain_rate(client, args.jobs)
        pickup = sorted(await _pickup_phase(client, args.pickup_samples))
    finally:
        await client.__aexit__(None, None, None)
    return {
        "enqueue_jobs_per_s": enqueue_rate,
        "drain_jobs_per_s": drain_rate,
        "pickup_p50_ms": statistics.median(pickup),
        "pickup_p99_ms": pickup[min(len(pickup) - 1, int(len(pickup) * 0.99))],
        "rss_mb": _rss_mb(pid),
        "cpu_us_per_job": {"enqueue": enqueue_cpu,
                           "drain": {k: v for k, v in drain_cpu.items() if k != "client"}},
    }


def _fresh_storage(storage: str, run: int) -> str:
    """A shared store gets a key prefix (Redis) or a schema (PostgreSQL) of its own per
    run, and a SQLite file a name of its own beside the one named, so every run starts
    empty and nothing of the operator's is touched; memory is fresh anyway."""
    if storage.startswith("memory://"):
        return storage
    if storage.startswith("sqlite://"):
        path, sep, query = storage.partition("?")
        return f"{path}.bench-{os.getpid()}-{run}{sep}{query}"
    if storage.startswith(("postgresql://", "postgres://")):
        from gotask.actors.storage.postgres import PostgresSettings, with_schema

        schema = PostgresSettings.from_url(storage).schema
        return with_schema(storage, f"{schema}_bench_{os.getpid()}_{run}")
    from gotask.actors.storage.redis import RedisSettings, with_prefix

    prefix = RedisSettings.from_url(storage).prefix
    return with_prefix(storage, f"{prefix}-bench-{os.getpid()}-{run}")


def _forget_storage(storage: str) -> None:
    if storage.startswith(("postgresql://", "postgres://")):
        from gotask.actors.storage.postgres import drop_schema

        drop_schema(storage)
    elif storage.startswith("sqlite://"):
        from gotask.actors.storage.sqlite import SqliteSettings

        path = SqliteSettings.from_url(storage).path
        for suffix in ("", "-wal", "-shm", ".lock"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    elif not storage.startswith("memory://"):
        from gotask.actors.storage.redis import delete_prefix

        delete_prefix(storage)


def python_mops(loops: int = 1_000_000) -> float:
    """Millions of iterations per second of a fixed pure-Python loop (dict and list work)
    on one core, best of three: how fast this machine runs code like GoTask's, so that
    figures taken on different machines, or days, can be compared. Benchmarks report it
    before and after their runs: a shared VM's speed can change by 2x within minutes."""
    best = 0.0
    for _ in range(3):
        table: dict[int, int] = {}
        window: list[int] = []
        start = time.perf_counter()
        for i in range(loops):
            table[i & 1023] = i
            window.append(table[i & 511])
            if len(window) > 64:
                window.clear()
        best = max(best, loops / (time.perf_counter() - start) / 1e6)
    return round(best, 2)


def cpu_ticks() -> tuple[int, int] | None:
    """The machine's (steal, total) CPU ticks since boot from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percent of CPU time the hypervisor gave to other guests between two `cpu_ticks()`:
    on a shared VM, a high figure means the run was slowed by its neighbours."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def run_job_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the job benchmark `args.runs` times, a fresh node each time; return medians
    and every run's figures."""
    samples = []
    speed_before, ticks_before = python_mops(), cpu_ticks()
    for run in range(args.runs):
        port, http_port = free_port(), free_port() if args.http_scrape else None
        storage = _fresh_storage(args.storage, run)
        node = _start_node(storage, args.concurrency, port, http_port)
        try:
            samples.append(trio.run(_scraped_run, args, port, http_port, node.pid, storage))
        finally:
            node.terminate()
            node.wait(timeout=60)
            _forget_storage(storage)
    result: dict[str, Any] = {"storage": args.storage, "jobs": args.jobs,
                              "concurrency": args.concurrency,
                              "enqueue_concurrency": args.enqueue_concurrency}
    for key in ("enqueue_jobs_per_s", "drain_jobs_per_s", "pickup_p50_ms", "pickup_p99_ms",
                "rss_mb"):
        value = statistics.median(s[key] for s in samples)
        result[key] = round(value, 2) if key.endswith("_ms") else round(value, 1)
    result["cpu_us_per_job"] = {
        phase: {who: statistics.median(s["cpu_us_per_job"][phase][who] for s in samples)
                for who in samples[0]["cpu_us_per_job"][phase]}
        for phase in ("enqueue", "drain")}
    result["runs"] = args.runs
    result["cpus"] = os.cpu_count()
    result["cpu_steal_pct"] = steal_pct(ticks_before, cpu_ticks())
    result["python_mops"] = [speed_before, python_mops()]
    if args.http_scrape:
        result["scrapes"] = [s["scrapes"] for s in samples]
    result["samples"] = {key: [round(s[key], 2 if key.endswith("_ms") else 1) for s in samples]
                         for key in ("enqueue_jobs_per_s", "drain_jobs_per_s", "pickup_p99_ms")}
    return result


def main(argv: list[str]) -> int:
    """`gotask bench [runtime|runners|cron|http|grpc|console] ...`; returns the exit code."""
    if argv[:1] == ["console"]:
        from gotask.bench_console import main as console_main

        return console_main(argv[1:])
    if argv[:1] == ["http"]:
        from gotask.bench_http import main as http_main

        return http_main(argv[1:])
    if argv[:1] == ["grpc"]:
        from gotask.bench_grpc import main as grpc_main

        return grpc_main(argv[1:])
    if argv[:1] == ["runtime"]:
        from gotask.bench_runtime import main as runtime_main

        return runtime_main(argv[1:])
    if argv[:1] == ["runners"]:
        from gotask.bench_runners import main as runners_main

        return runners_main(argv[1:])
    if argv[:1] == ["cron"]:
        from gotask.bench_cron import main as cron_main

        return cron_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gotask bench")
    parser.add_argument("--storage", default="memory://")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--enqueue-concurrency", type=int, default=None,
                        help="concurrent enqueue callers in the client (default: --concurrency)")
    parser.add_argument("--pickup-samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sequential", action="store_true",
                        help="one caller, one job per call, blocking client: enqueue rate "
                             "and latency")
    parser.add_argument("--idle-pickup", action="store_true",
                        help="one job at a time into an idle node: pickup latency")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--http-scrape", action="store_true",
                        help="serve the node's HTTP face and scrape /metrics every second")
    args = parser.parse_args(argv)
    if args.enqueue_concurrency is None:
        args.enqueue_concurrency = args.concurrency
    if args.sequential or args.idle_pickup:
        from gotask.bench_sequential import run_sequential_bench

        result = run_sequential_bench(args)
    else:
        result = run_job_bench(args)
    write_result(result, args.json)
    return 0


def write_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a benchmark's result: one JSON line, or one `key value` line per figure."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key:22} {value}\n")
