"""`gotask bench grpc`: enqueue through the gRPC face, unary and streamed.

Rules of this module:
- The node is a child process (`gotask node --app examples.tasks --grpc ...`, memory://
  unless `--storage`), or a running node's face (`--target HOST:PORT`, token from
  `$GOTASK_HTTP_TOKEN`); the client is this process, grpcio's asyncio client over
  loopback. Jobs go to a queue the node does not work (`bench`): enqueue is measured
  alone.
- Unary: open loop, call i is due at `start + i / rate` whatever earlier answers did, and
  its latency counts from when it was due (no coordinated omission); any error counts.
- Streamed: one `EnqueueStream` of `--stream-jobs` jobs, `--per-message` jobs per
  message, from one client; jobs/s from the first message to the last acknowledgement.
- The result carries the CPU microseconds per job of this client and of the node (when
  it started it), and the load average and `python_mops` before and after: on a shared
  machine those say how much of a figure is the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gotask.bench import _CpuMeter, free_port, python_mops
from gotask.bench_http import summary
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc

__all__ = ["main"]

QUEUE = "bench"


def _job(i: int) -> pb.JobSpec:
    return pb.JobSpec(task="add", arguments_msgpack=b"\x92\x92\x01" + bytes([i & 0x7F]) + b"\x80",
                      queue=QUEUE)


async def unary(stub: pb_grpc.GoTaskStub, metadata: Any, rate: float,
                duration_s: float) -> dict[str, Any]:
    """`rate` Enqueue calls per second for `duration_s` seconds; latency summary."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            await stub.Enqueue(pb.EnqueueRequest(jobs=[_job(i)]), metadata=metadata,
                               timeout=30)
        except grpc.RpcError:
            errors += 1
        else:
            latencies.append(loop.time() - due)

    start = loop.time()
    tasks = []
    for i in range(int(rate * duration_s)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    return summary(latencies, errors, loop.time() - start)


async def streamed(stub: pb_grpc.GoTaskStub, metadata: Any, jobs: int,
                   per_message: int) -> dict[str, Any]:
    """One stream of `jobs` jobs; jobs/s until the last acknowledgement."""
    async def messages() -> AsyncIterator[pb.EnqueueRequest]:
        for start in range(0, jobs, per_message):
            yield pb.EnqueueRequest(jobs=[_job(i) for i in
                                          range(start, min(jobs, start + per_message))])

    started = time.perf_counter()
    acked = acks = 0
    async for ack in stub.EnqueueStream(messages(), metadata=metadata, timeout=600):
        acked += len(ack.ids)
        acks += 1
    elapsed = time.perf_counter() - started
    return {"jobs": acked, "per_message": per_message, "acks": acks,
            "jobs_per_s": round(acked / elapsed, 1), "seconds": round(elapsed, 2)}


async def _measure(target: str, token: str | None, node_pid: int,
                   args: argparse.Namespace) -> dict[str, Any]:
    """Both phases, each with the CPU microseconds per job of this client and the node."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.GoTaskStub(channel)  # type: ignore[no-untyped-call]
        await unary(stub, metadata, args.rate, 1.0)  # warm up
        meter = _CpuMeter(node_pid, "memory://")
        result: dict[str, Any] = {"unary": await unary(stub, metadata, args.rate,
                                                       args.duration)}
        result["unary"]["cpu_us_per_job"] = meter.per_job_us(result["unary"]["requests"])
        result["streamed"] = []
        for n in args.per_message:
            result["streamed"].append(await streamed(stub, metadata, args.stream_jobs, n))
            result["streamed"][-1]["cpu_us_per_job"] = meter.per_job_us(args.stream_jobs)
        return result


def _start_node(storage: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gotask.cli", "node", "--app", "examples.tasks",
           "--listen", f"127.0.0.1:{free_port()}", "--storage", storage,
           "--grpc", f"127.0.0.1:{port}", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    """`gotask bench grpc [--target HOST:PORT] [--rate N] [--duration S] ...`."""
    p = argparse.ArgumentParser(prog="gotask bench grpc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="a running node's gRPC face (default: start one)")
    p.add_argument("--storage", default="memory://", help="storage of the node it starts")
    p.add_argument("--rate", type=float, default=1000.0, help="unary calls per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of unary calls")
    p.add_argument("--stream-jobs", type=int, default=100_000, help="jobs in the stream")
    p.add_argument("--per-message", type=int, nargs="+", default=[1, 100],
                   help="jobs per stream message (one stream per value)")
    args = p.parse_args(argv)
    before = {"loadavg": os.getloadavg(), "python_mops": python_mops()}
    node = None
    target = args.target
    if target is None:
        port = free_port()
        node = _start_node(args.storage, port)
        target = f"127.0.0.1:{port}"
    try:
        result = asyncio.run(_measure(target, os.environ.get("GOTASK_HTTP_TOKEN"),
                                      node.pid if node else 0, args))
    finally:
        if node is not None:
            node.terminate()
            node.wait(timeout=60)
    result |= {"target": "own node, " + args.storage if node else target,
               "before": before,
               "after": {"loadavg": os.getloadavg(), "python_mops": python_mops()}}
    print(json.dumps(result))
    return 1 if result["unary"]["errors"] else 0
