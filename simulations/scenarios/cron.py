"""Cron entries over simulated days: every worker declares the same minutely, hourly and
quarter-hourly entries and all of them fire, with no leader, through storage's
compare-and-set, while workers crash, restart, are partitioned and lose fire replies,
their clocks skewed; whole-cluster outages jump every clock forward by hours (the
misfire policies then decide what fires)."""

from __future__ import annotations

import math
from typing import Any

import trio

from simulations.cluster import Sim
from simulations.scenarios import scenario
from simulations.workload import CronSpec

__all__ = ["CRON_ENTRIES"]

CRON_ENTRIES = (
    CronSpec("minutely", "* * * * *", misfire="once"),
    CronSpec("hourly", "0 * * * *", misfire="all", misfire_limit=3),
    CronSpec("quarterly", "*/15 * * * *", misfire="skip", zone="America/New_York"),
)
#: Whole-cluster outages, each jumping the clocks forward by hours.
OUTAGES = 2
SESSION_S = (90.0, 150.0)
HOUR_S = 3600


@scenario("cron_days", skew_s=120.0, cron=CRON_ENTRIES,
          workload={"ops": 8, "end_s": 15.0, "long_fraction": 0.0})
async def cron_days(sim: Sim) -> None:
    """Three workers fire minutely, hourly and quarter-hourly cron entries over about
    one to two simulated days: crashes, partitions, lost fire replies and skewed clocks
    in each session of minutes; between sessions the whole cluster is down for hours.

    The checker counts what storage fired (each compare-and-set reply and the ticks of
    its jobs): every tick exactly once, missed only while no worker could fire it.
    """
    lost: list[str] = []

    def lose_fire_reply(kind: str, info: dict[str, Any]) -> None:
        # Storage has applied the fire; its reply is lost with the node it was for.
        if kind == "send" and info["type"] == "CronFireReply" and len(lost) < 4 \
                and sim.rng.random() < 0.05:
            lost.append(info["dst"])
            sim.crash(info["dst"])

    sim.on_net(lose_fire_reply)
    for _ in range(OUTAGES):
        await _session(sim, sim.rng.uniform(*SESSION_S))
        await _outage(sim)
    await _session(sim, sim.rng.uniform(*SESSION_S))


async def _session(sim: Sim, length_s: float) -> None:
    """Minutes of single-worker faults; now and then the whole cluster stops for one
    to two minutes without any clock jump."""
    end = sim.now() + length_s
    while sim.now() < end:
        await trio.sleep(sim.rng.uniform(10.0, 40.0))
        victim = sim.pick_worker()
        roll = sim.rng.random()
        if victim is None:
            continue
        if roll < 0.4:
            sim.crash(victim)
        elif roll < 0.8:
            sim.partition(victim)
            await trio.sleep(sim.rng.uniform(5.0, 70.0))
            sim.heal()
        elif roll < 0.9:
            await _all_down(sim, sim.rng.uniform(30.0, 130.0), jump_s=0.0)


async def _outage(sim: Sim) -> None:
    """Every worker down; the clocks jump to one to three minutes before an hour,
    10 to 24 hours on; the workers come back one by one."""
    now = sim.store.world.wall()
    target = (math.floor(now / HOUR_S) + sim.rng.randint(10, 24)) * HOUR_S
    await _all_down(sim, sim.rng.uniform(2.0, 10.0),
                    jump_s=target - sim.rng.uniform(60.0, 180.0) - now)


async def _all_down(sim: Sim, down_s: float, *, jump_s: float) -> None:
    """Stop every worker for `down_s` (crashing again any that a pending restart brings
    back), jump the clocks, restart them one by one."""
    end = sim.now() + down_s
    while True:
        for name in sim.workers_up():
            sim.crash(name, restart=False)
        for member in sim.workers.values():
            if not member.up and not member.starting:
                await member.gone.wait()
        if sim.now() >= end and not sim.workers_up():
            break
        await trio.sleep(0.5)
    if jump_s > 0:
        sim.jump_clocks(jump_s)
    for name in sorted(sim.workers):
        await trio.sleep(sim.rng.uniform(0.0, 3.0))
        await sim.restart(name)
