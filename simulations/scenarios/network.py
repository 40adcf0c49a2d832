"""Network faults: lost replies, a partition from storage, drops, duplicates, reordering."""

from __future__ import annotations

from typing import Any

import trio

from gotask.actors.storage.base import AckJobs, AckReply, GetJobs, GetJobsReply
from simulations.cluster import Sim
from simulations.scenarios import scenario
from simulations.scenarios.crashes import busiest


@scenario("ack_reply_lost")
async def ack_reply_lost(sim: Sim) -> None:
    """Storage accepts a completion but its reply is lost: the worker retries the ack,
    which must be answered "duplicate" and change nothing."""
    hits: list[str] = []

    def hook(cmd: Any, reply: Any) -> None:
        if not (isinstance(cmd, AckJobs) and isinstance(reply, AckReply) and len(hits) < 3):
            return
        if "ok" in reply.statuses:
            holder = _holder(sim, cmd.items[0].job_id)
            if holder is not None:
                hits.append(holder)
                sim.isolate(holder)  # the AckReply about to be sent is dropped
                sim.spawn(_heal_after, sim, 0.05)

    await trio.sleep(sim.rng.uniform(1.0, 8.0))
    sim.on_storage(hook)
    await trio.sleep(20.0)


def _holder(sim: Sim, job_id: str) -> str | None:
    reply = sim.core.inner.handle(GetJobs((job_id,)), sim.store.world.wall())
    assert isinstance(reply, GetJobsReply)
    record = reply.jobs[0]
    return record.lease_node if record is not None else None


async def _heal_after(sim: Sim, delay_s: float) -> None:
    await trio.sleep(delay_s)
    sim.heal()


@scenario("partition")
async def partition(sim: Sim) -> None:
    """A worker is cut off from storage for 3x the lease timeout, then healed: its leases
    expire and move on, its late heartbeats and completions are rejected."""
    await trio.sleep(sim.rng.uniform(4.0, 12.0))
    victim = busiest(sim)
    if victim is None:
        return
    sim.partition(victim)
    await trio.sleep(3 * sim.spec.lease_timeout_s)
    sim.heal()
    await trio.sleep(10.0)


@scenario("network_chaos", workload={"keyless_fraction": 0.0})
async def network_chaos(sim: Sim) -> None:
    """Messages are dropped, duplicated and reordered for 20 s, then the network heals.

    Every op carries an idempotency key: a duplicated Enqueue is a repeat, not a new job.
    """
    await trio.sleep(sim.rng.uniform(0.0, 3.0))
    loss = sim.rng.choice([0.02, 0.05, 0.1])
    sim.set_net_faults(loss=loss, duplicate=0.05, reorder=0.1)
    await trio.sleep(20.0)
    sim.set_net_faults(0.0, 0.0, 0.0)
