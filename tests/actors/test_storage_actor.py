"""The storage actor shell: byte budgets, errors that must not crash it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import trio

from gotask._errors import RemoteActorError
from gotask._job import NewJob
from gotask._messages import (
    LeaseWait,
)
from gotask.actors.storage.actor import LEASE_REPLY_BYTES_MAX, run_storage
from gotask.actors.storage.base import (
    EnqueueJobs,
    GetJobs,
    LeaseJobs,
    LeaseReply,
    QueueWeight,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import open_node, sim_world

from ..storage.contract import new_job
from ..storage.shell_contract import Actor, StorageShellContract, lease


def big_job(i: int) -> NewJob:
    return NewJob(f"job{i:04}", "t", "default", msgpack.packb([["x" * 200_000], {}]))


async def test_lease_reply_fits_a_frame_and_releases_the_rest(autojump_clock: Any) -> None:
    core = MemoryStorageCore()
    async with open_node("owner", sim_world(1)) as node:
        addr = await node.start_actor("storage", functools.partial(run_storage, core=core))
        await node.call(addr, EnqueueJobs(tuple(big_job(i) for i in range(10))))
        lease = LeaseJobs("w", (QueueWeight("default"),), 10, 30.0)
        reply = await node.call(addr, LeaseWait(lease, 0.0))
        assert isinstance(reply, LeaseReply)
        assert 1 <= len(reply.jobs) < 10
        assert sum(len(j.args) for j in reply.jobs) <= LEASE_REPLY_BYTES_MAX
        # One id a read: ten 200 KB records would not fit one reply (ReplyTooLarge).
        rest = [(await node.call(addr, GetJobs((f"job{i:04}",)))).jobs[0] for i in range(10)]
        released = [j for j in rest if j.state == "queued"]
        assert len(released) == 10 - len(reply.jobs)
        assert all(j.releases == 1 and j.attempts_counted == 0 for j in released)
        again = await node.call(addr, lease)
        assert again.jobs[0].id == released[0].id  # released jobs kept their place


async def test_a_bad_command_gets_an_error_and_the_actor_goes_on() -> None:
    core = MemoryStorageCore()
    async with open_node("owner", sim_world(1)) as node:
        addr = await node.start_actor("storage", functools.partial(run_storage, core=core))
        with pytest.raises(RemoteActorError, match=r"LeaseWait\.lease must be a LeaseJobs"):
            await node.call(addr, LeaseWait(GetJobs(()), 1.0))
        assert (await node.call(addr, GetJobs(("nope",)))).jobs == (None,)



class TestMemoryShell(StorageShellContract):
    @pytest.fixture
    async def actor(self, autojump_clock: Any) -> AsyncIterator[Actor]:
        async with open_node("solo", sim_world(2)) as node:
            core = MemoryStorageCore()
            yield node, await node.start_actor("storage", functools.partial(run_storage, core=core))


async def test_a_delayed_job_wakes_a_parked_lease_on_time(autojump_clock: Any) -> None:
    # No polling: the lease is answered when the job is due, not some time after.
    async with open_node("solo", sim_world(3)) as node:
        addr = await node.start_actor(
            "storage", functools.partial(run_storage, core=MemoryStorageCore()))
        job = new_job(delay_s=0.5)
        await node.call(addr, EnqueueJobs((job,)))
        started = trio.current_time()
        reply = await node.call(addr, LeaseWait(lease(), 10.0))
        assert [j.id for j in reply.jobs] == [job.id]
        assert trio.current_time() - started == pytest.approx(0.5, abs=1e-3)
