"""Node crashes: while holding leases, between a lease's commit and its reply, and a
poison job that kills whichever node runs it."""

from __future__ import annotations

from typing import Any

import trio

from gotask.actors.storage.base import LeaseJobs, LeaseReply, ListJobs, ListJobsReply
from simulations.cluster import Sim
from simulations.scenarios import scenario


def busiest(sim: Sim) -> str | None:
    """The running worker holding the most leases (ties: the last by name)."""
    reply = sim.core.inner.handle(ListJobs(state="active", limit=1000), sim.store.world.wall())
    assert isinstance(reply, ListJobsReply)
    held: dict[str, int] = {}
    for job in reply.jobs:
        if job.lease_node is not None:
            held[job.lease_node] = held.get(job.lease_node, 0) + 1
    up = sim.workers_up()
    return max(up, key=lambda name: (held.get(name, 0), name)) if up else None


@scenario("node_crash")
async def node_crash(sim: Sim) -> None:
    """A worker node crashes while holding leases, twice; each comes back later."""
    for _ in range(2):
        await trio.sleep(sim.rng.uniform(3.0, 12.0))
        victim = busiest(sim)
        if victim is not None:
            sim.crash(victim)


@scenario("lease_reply_lost")
async def lease_reply_lost(sim: Sim) -> None:
    """A node crashes after storage committed its lease, before the reply arrived."""
    target = sim.pick_worker()
    hits: list[str] = []

    def hook(cmd: Any, reply: Any) -> None:
        if (isinstance(cmd, LeaseJobs) and isinstance(reply, LeaseReply) and reply.jobs
                and cmd.node == target and len(hits) < 2):
            hits.append(cmd.node)
            sim.isolate(cmd.node)  # the LeaseReply about to be sent is dropped
            sim.crash(cmd.node)
            sim.spawn(_heal_after, sim, 0.5)

    await trio.sleep(sim.rng.uniform(1.0, 6.0))
    sim.on_storage(hook)
    await trio.sleep(25.0)


async def _heal_after(sim: Sim, delay_s: float) -> None:
    await trio.sleep(delay_s)
    sim.heal()


@scenario("poison_job", workload={"ops": 16, "poison": 2})
async def poison_job(sim: Sim) -> None:
    """Two poison jobs kill the node running them on every attempt; both reach the DLQ."""
    await trio.sleep(30.0)
