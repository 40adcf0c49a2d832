"""Node trouble that is not a crash: a stalled (zombie) worker, a crashing client, a
rolling restart, skewed clocks, and a burst against full inboxes."""

from __future__ import annotations

from typing import Any

import trio

from gotask.actors.storage.base import LeaseJobs, LeaseReply
from simulations.cluster import Sim
from simulations.scenarios import scenario
from simulations.workload import duration_of


@scenario("zombie_worker", workload={"long_fraction": 0.5})
async def zombie_worker(sim: Sim) -> None:
    """A worker's heartbeats stall right after it leased a long job: its lease expires and
    another worker runs the job again while the zombie runs on; the zombie's ack is
    stale and must be rejected, and its next heartbeat tells it to stop.

    NodeConfig refuses a heartbeat interval at or above the lease timeout, so the stall
    is every Heartbeat the node sends being lost; its acks and leases get through.
    """
    stalls: list[str] = []

    def hook(cmd: Any, reply: Any) -> None:
        if not (isinstance(cmd, LeaseJobs) and isinstance(reply, LeaseReply)) or sim.stalled:
            return
        longest = max((duration_of(job.args) for job in reply.jobs), default=0.0)
        if longest > sim.spec.lease_timeout_s and len(stalls) < 2:
            stalls.append(cmd.node)
            sim.stall(cmd.node)
            sim.spawn(_unstall, sim, sim.rng.uniform(1.5, 3.0) * sim.spec.lease_timeout_s)

    await trio.sleep(sim.rng.uniform(0.0, 5.0))
    sim.on_storage(hook)
    await trio.sleep(30.0)


async def _unstall(sim: Sim, after_s: float) -> None:
    await trio.sleep(after_s)
    sim.heal()


@scenario("client_crash")
async def client_crash(sim: Sim) -> None:
    """A client crashes right after sending an enqueue; restarted, it retries the op with
    the same idempotency key and must get the same job back."""
    crashed: list[str] = []

    def listener(kind: str, info: dict[str, Any]) -> None:
        src = info["src"]
        if kind == "send" and info["type"] == "Enqueue" and src.startswith("client") \
                and len(crashed) < 3 and sim.rng.random() < 0.3:
            crashed.append(src)
            sim.crash(src)

    sim.on_net(listener)
    await trio.sleep(25.0)


@scenario("rolling_restart", workload={"long_fraction": 0.3})
async def rolling_restart(sim: Sim) -> None:
    """Every worker is drained and restarted in turn: finished jobs are acked, unfinished
    ones released (their attempt does not count) and run again elsewhere."""
    for name in sorted(sim.workers):
        await trio.sleep(sim.rng.uniform(2.0, 5.0))
        await sim.stop_gracefully(name)
        await trio.sleep(sim.rng.uniform(0.5, 2.0))
        await sim.restart(name)


@scenario("clock_skew", skew_s=300.0, workload={"delayed_fraction": 0.5})
async def clock_skew(sim: Sim) -> None:
    """Every node's wall clock is off by up to 5 minutes, storage's too: due times and
    lease expiry follow the storage clock alone, so nothing runs early or is stolen."""
    await trio.sleep(20.0)


@scenario("burst", clients=4, outbound_max=8, storage_inbox_max=8, latency_s=(0.002, 0.02),
          workload={"ops": 240, "start_s": 1.0, "end_s": 1.1, "long_fraction": 0.0,
                    "duration_s": (0.05, 0.5), "cancel_fraction": 0.02})
async def burst(sim: Sim) -> None:
    """Ten times the usual number of jobs within 0.1 s, against tiny inboxes and link
    buffers: backpressure makes senders wait, and nothing is dropped."""
    await trio.sleep(3.0)
