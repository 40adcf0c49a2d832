"""`gotask bench runtime`: what the actor runtime costs, measured.

Rules of this module:
- Three figures, each the median of `--runs` runs: messages/s between two actors on one
  node; messages/s streamed from an actor on one node process to an actor on another
  over loopback TCP; one-at-a-time `call` round trips/s between the two processes.
- Beside the call figure, in the same minutes, each run measures the floor under it: the
  same one-at-a-time round trips between two processes with plain blocking sockets, and
  with a bare trio program of the call's shape (`gotask.bench_floor`).
- The peer is a real child process (`python -m gotask.bench_runtime PORTFILE`), talking
  through the production transport, handshake and codec.
- The machine's 1-minute load average before and after is part of the result: on a
  shared 2-core machine the figures mean little without it. The two processes are not
  pinned: where the kernel places them (one core, in turn, or two, in parallel) moves
  the streaming figure between about the sum and the larger of the two sides' CPU costs.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from gotask.bench import cpu_ticks, python_mops, steal_pct
from gotask.bench_floor import measure as measure_floor
from gotask.runtime import ActorContext, Address, message, open_node

__all__ = ["main", "run_benchmarks"]


@message("bench.msg")
@attrs.frozen
class BenchMsg:
    n: int


@message("bench.count")
@attrs.frozen
class BenchCount:
    pass


async def _sink(ctx: ActorContext, *, task_status: Any) -> None:
    """Counts messages; answers `BenchCount` with the count, `BenchMsg` calls with echo."""
    count = 0
    task_status.started()
    while True:
        for env in await ctx.receive_batch(1024):
            if env.corr:
                await ctx.reply(env, env.msg if isinstance(env.msg, BenchMsg) else BenchMsg(count))
            else:
                count += 1


async def _stream(node: Any, dst: Address, messages: int) -> float:
    start = time.perf_counter()
    send = node.send
    msg = BenchMsg(1)
    for _ in range(messages):
        await send(dst, msg)
    total = (await node.call(dst, BenchCount(), timeout_s=120)).n
    elapsed = time.perf_counter() - start
    assert total >= messages, (total, messages)
    return messages / elapsed


async def _calls(node: Any, dst: Address, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await node.call(dst, BenchMsg(i))
    return calls / (time.perf_counter() - start)


async def _local(messages: int) -> float:
    async with open_node("bench-local") as node:
        dst = await node.start_actor("sink", _sink, inbox_max=4096)
        return await _stream(node, dst, messages)


async def _remote(messages: int, calls: int, port: int) -> tuple[float, float]:
    from gotask.transports.tcp import connect_tcp

    async with open_node(f"bench-client-{os.getpid()}") as node:
        link = await connect_tcp(node, "127.0.0.1", port, secret=None)
        dst = Address(link.peer, "sink")
        streamed = await _stream(node, dst, messages)
        called = await _calls(node, dst, calls)
        return streamed, called


async def _serve_peer(port_file: str) -> None:
    from gotask.transports.tcp import serve_tcp

    async with open_node("bench-peer") as node:
        await node.start_actor("sink", _sink, inbox_max=4096)
        port = await node.nursery.start(functools.partial(serve_tcp, node, "127.0.0.1", 0,
                                                          secret=None))
        Path(port_file).write_text(str(port))
        await trio.sleep_forever()


def _start_peer() -> tuple[subprocess.Popen[bytes], int]:
    fd, port_file = tempfile.mkstemp(prefix="gotask-bench-")
    os.close(fd)
    os.unlink(port_file)
    proc = subprocess.Popen([sys.executable, "-m", "gotask.bench_runtime", port_file])
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file) or not Path(port_file).read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the benchmark peer process did not start")
        time.sleep(0.05)
    port = int(Path(port_file).read_text())
    os.unlink(port_file)
    return proc, port


def run_benchmarks(runs: int = 5, messages: int = 200_000, calls: int = 10_000) -> dict[str, Any]:
    """Run every runtime benchmark `runs` times; return medians and every sample."""
    load_before, ticks_before = os.getloadavg()[0], cpu_ticks()
    speed_before = python_mops()
    local = [trio.run(_local, messages) for _ in range(runs)]
    proc, port = _start_peer()
    remote: list[tuple[float, float]] = []
    floors: list[tuple[float, float]] = []
    try:
        for _ in range(runs):
            remote.append(trio.run(_remote, messages, calls, port))
            floors.append((measure_floor("raw", calls), measure_floor("trio", calls)))
    finally:
        proc.kill()
        proc.wait()
    return {
        "mode": "runtime",
        "runs": runs,
        "cpus": os.cpu_count(),
        "python_mops": [speed_before, python_mops()],
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_steal_pct": steal_pct(ticks_before, cpu_ticks()),
        "local_msgs_per_s": round(statistics.median(local)),
        "tcp_stream_msgs_per_s": round(statistics.median(r[0] for r in remote)),
        "tcp_call_round_trips_per_s": round(statistics.median(r[1] for r in remote)),
        "call_floor_raw_round_trips_per_s": round(statistics.median(f[0] for f in floors)),
        "call_floor_trio_round_trips_per_s": round(statistics.median(f[1] for f in floors)),
        "samples": {"local": [round(x) for x in local],
                    "tcp_stream": [round(r[0]) for r in remote],
                    "tcp_call": [round(r[1]) for r in remote],
                    "call_floor_raw": [round(f[0]) for f in floors],
                    "call_floor_trio": [round(f[1]) for f in floors]},
    }


def main(argv: list[str]) -> int:
    """`gotask bench runtime [--runs N] [--messages N] [--calls N] [--json]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="gotask bench runtime")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_benchmarks(args.runs, args.messages, args.calls)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key in ("local_msgs_per_s", "tcp_stream_msgs_per_s", "tcp_call_round_trips_per_s",
                    "call_floor_raw_round_trips_per_s", "call_floor_trio_round_trips_per_s"):
            sys.stdout.write(f"{key:34} {result[key]:>12,}  (median of {args.runs})\n")
        before, after = result["load_avg_1m"]
        sys.stdout.write(f"{'load average (1 min)':34} {before:>6} before, {after} after\n")
        before, after = result["python_mops"]
        sys.stdout.write(f"{'python_mops (machine speed)':34} {before:>6} before, {after} after\n")
        sys.stdout.write(f"{'CPU steal (% of machine time)':34} {result['cpu_steal_pct']}\n")
    return 0


if __name__ == "__main__":
    trio.run(_serve_peer, sys.argv[1])
