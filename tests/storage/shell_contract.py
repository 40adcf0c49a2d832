"""What every storage actor must do, whatever its backend: parking, watching, cancelling.

A backend's test module subclasses `StorageShellContract` and provides the fixture
`actor`: a node named "solo" and the address of a storage actor on it. Durations are
asserted loosely enough for a real clock and a real store.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from gotask._errors import RemoteActorError
from gotask._messages import (
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    Unpark,
    WatchJobs,
)
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
from gotask.runtime import Address

from .contract import new_job

Actor = tuple[Any, Address]


def lease(queue: str = "default") -> LeaseJobs:
    """A lease for node "solo" of up to 4 jobs of `queue`."""
    return LeaseJobs("solo", (QueueWeight(queue),), 4, 30.0)


class StorageShellContract:
    """The storage actor's behaviour over any backend (fixture `actor` required)."""

    async def test_a_parked_lease_wakes_on_enqueue(self, actor: Actor) -> None:
        node, addr = actor
        got: list[LeaseReply] = []
        async with trio.open_nursery() as nursery:
            async def wait() -> None:
                got.append(await node.call(addr, LeaseWait(lease(), 10.0)))
            nursery.start_soon(wait)
            await trio.sleep(0.2)
            assert not got
            started = trio.current_time()
            job = new_job()
            await node.call(addr, EnqueueJobs((job,)))
        assert [j.id for j in got[0].jobs] == [job.id]
        assert trio.current_time() - started < 1.0

    async def test_a_parked_lease_wakes_when_a_delayed_job_is_due(self, actor: Actor) -> None:
        node, addr = actor
        job = new_job(delay_s=0.5)
        await node.call(addr, EnqueueJobs((job,)))
        started = trio.current_time()
        reply = await node.call(addr, LeaseWait(lease(), 10.0))
        assert [j.id for j in reply.jobs] == [job.id]
        assert 0.3 < trio.current_time() - started < 2.0

    async def test_unpark_and_timeout_answer_empty(self, actor: Actor) -> None:
        node, addr = actor
        started = trio.current_time()
        assert (await node.call(addr, LeaseWait(lease("empty"), 0.2))).jobs == ()
        assert 0.2 <= trio.current_time() - started < 2.0
        async with trio.open_nursery() as nursery:
            async def wait() -> None:
                assert (await node.call(addr, LeaseWait(lease("empty"), 30.0))).jobs == ()
                nursery.cancel_scope.cancel()
            nursery.start_soon(wait)
            await trio.sleep(0.2)
            await node.call(addr, Unpark("solo"))
            await trio.sleep(5)
            raise AssertionError("Unpark did not answer the parked lease")

    async def test_watchers_get_changes_until_terminal(self, actor: Actor) -> None:
        node, addr = actor
        inbox = node.open_inbox("watcher")
        job = new_job()
        await node.call(addr, EnqueueJobs((job,)))
        reply = await node.call(addr, WatchJobs((job.id,), Address("solo", "watcher")))
        assert reply.jobs[0].state == "queued"
        token = (await node.call(addr, lease())).jobs[0].token
        await node.call(addr, CancelJobs((job.id,)))
        nack = NackItem(job.id, token.attempt, "E", "e", "", outcome="cancelled")
        await node.call(addr, NackJobs((nack,)))
        seen: list[Any] = []
        with trio.fail_after(5):
            while not seen or seen[-1].state != "cancelled":
                env = await inbox.receive()
                assert isinstance(env.msg, JobChanged)
                seen.append(env.msg.job)
        assert {record.state for record in seen[:-1]} <= {"active"}
        assert len(seen) == len({(r.state, r.cancel_requested) for r in seen})  # no repeats
        with trio.move_on_after(0.5):  # the watch ended with the job
            env = await inbox.receive()
            raise AssertionError(f"pushed after the job was terminal: {env.msg}")

    async def test_cancelling_a_running_job_tells_its_workers(self, actor: Actor) -> None:
        node, addr = actor
        workers = node.open_inbox(WORKERS)
        job = new_job()
        await node.call(addr, EnqueueJobs((job,)))
        leased = await node.call(addr, lease())
        await node.call(addr, CancelJobs((job.id,)))
        with trio.fail_after(5):
            env = await workers.receive()
        assert env.msg == CancelRunning((leased.jobs[0].token,))

    async def test_bad_messages_are_answered_with_errors(self, actor: Actor) -> None:
        node, addr = actor
        with pytest.raises(RemoteActorError, match="not a storage command: str"):
            await node.call(addr, "hello")
        with pytest.raises(RemoteActorError, match=r"LeaseWait\.lease must be a LeaseJobs"):
            await node.call(addr, LeaseWait(GetJobs(()), 1.0))
        assert (await node.call(addr, GetJobs(("nope",)))).jobs == (None,)
