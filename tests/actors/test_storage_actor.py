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
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    Unpark,
    WatchJobs,
)
from gotask.actors.storage.actor import LEASE_REPLY_BYTES_MAX, run_storage
from gotask.actors.storage.base import (
    CancelJobs,
    EnqueueJobs,
    GetJobs,
    LeaseJobs,
    LeaseReply,
    NackItem,
    NackJobs,
    QueueWeight,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import Address, open_node, sim_world

from ..storage.contract import new_job


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
        rest = (await node.call(addr, GetJobs(tuple(f"job{i:04}" for i in range(10))))).jobs
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


@pytest.fixture
async def memory_actor(autojump_clock: Any) -> AsyncIterator[tuple[Any, Address]]:
    async with open_node("solo", sim_world(2)) as node:
        core = MemoryStorageCore()
        yield node, await node.start_actor("storage", functools.partial(run_storage, core=core))


def _lease(queue: str = "default") -> LeaseJobs:
    return LeaseJobs("solo", (QueueWeight(queue),), 4, 30.0)


async def test_a_parked_lease_wakes_on_enqueue(memory_actor: tuple[Any, Address]) -> None:
    node, addr = memory_actor
    got: list[LeaseReply] = []
    async with trio.open_nursery() as nursery:
        async def wait() -> None:
            got.append(await node.call(addr, LeaseWait(_lease(), 10.0)))
        nursery.start_soon(wait)
        await trio.sleep(1.0)
        assert not got
        started = trio.current_time()
        job = new_job()
        await node.call(addr, EnqueueJobs((job,)))
    assert [j.id for j in got[0].jobs] == [job.id]
    assert trio.current_time() - started < 0.01


async def test_a_parked_lease_wakes_when_a_delayed_job_is_due(
    memory_actor: tuple[Any, Address],
) -> None:
    node, addr = memory_actor
    job = new_job(delay_s=0.5)
    await node.call(addr, EnqueueJobs((job,)))
    started = trio.current_time()
    reply = await node.call(addr, LeaseWait(_lease(), 10.0))
    assert [j.id for j in reply.jobs] == [job.id]
    assert 0.5 <= trio.current_time() - started < 0.51


async def test_unpark_and_timeout_answer_empty(memory_actor: tuple[Any, Address]) -> None:
    node, addr = memory_actor
    started = trio.current_time()
    assert (await node.call(addr, LeaseWait(_lease("empty"), 2.0))).jobs == ()
    assert trio.current_time() - started == pytest.approx(2.0, abs=0.01)
    async with trio.open_nursery() as nursery:
        async def wait() -> None:
            assert (await node.call(addr, LeaseWait(_lease("empty"), 30.0))).jobs == ()
            nursery.cancel_scope.cancel()
        nursery.start_soon(wait)
        await trio.sleep(0.2)
        await node.call(addr, Unpark("solo"))
        await trio.sleep(5)
        raise AssertionError("Unpark did not answer the parked lease")


async def test_watchers_get_changes_until_terminal(memory_actor: tuple[Any, Address]) -> None:
    node, addr = memory_actor
    inbox = node.open_inbox("watcher")
    job = new_job()
    await node.call(addr, EnqueueJobs((job,)))
    reply = await node.call(addr, WatchJobs((job.id,), Address("solo", "watcher")))
    assert reply.jobs[0].state == "queued"
    leased = await node.call(addr, _lease())
    await node.call(addr, CancelJobs((job.id,)))
    token = leased.jobs[0].token
    await node.call(addr, NackJobs((NackItem(job.id, token.attempt, "E", "e", "",
                                             outcome="cancelled"),)))
    states = []
    with trio.fail_after(5):
        while not states or states[-1] != "cancelled":
            env = await inbox.receive()
            assert isinstance(env.msg, JobChanged)
            states.append(env.msg.job.state)
    assert states == ["active", "active", "cancelled"]  # leased, cancel requested, done


async def test_cancelling_a_running_job_tells_its_node_s_workers(
    memory_actor: tuple[Any, Address],
) -> None:
    node, addr = memory_actor
    workers = node.open_inbox(WORKERS)
    job = new_job()
    await node.call(addr, EnqueueJobs((job,)))
    leased = await node.call(addr, _lease())
    await node.call(addr, CancelJobs((job.id,)))
    with trio.fail_after(5):
        env = await workers.receive()
    assert env.msg == CancelRunning((leased.jobs[0].token,))


async def test_anything_else_is_answered_with_an_error(memory_actor: tuple[Any, Address]) -> None:
    node, addr = memory_actor
    with pytest.raises(RemoteActorError, match="not a storage command: str"):
        await node.call(addr, "hello")
