"""The Broker's shell on a real node, against a storage actor that answers at its pace."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from gotask import _protocol as proto
from gotask._app import App, pack_args
from gotask._errors import RemoteActorError
from gotask._messages import BROKER
from gotask.actors import broker
from gotask.actors.broker import run_broker
from gotask.actors.storage import base as storage
from gotask.runtime import ActorContext, Address, Node, open_node

app = App("shell-tests")


@app.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


class SlowReads:
    """A storage actor that answers enqueues at once and holds every list until `release`."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.lists_held = 0

    async def run(self, ctx: ActorContext, *, task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                for env in await ctx.receive_batch():
                    match env.msg:
                        case storage.EnqueueJobs(jobs=jobs):
                            reply = storage.EnqueueReply(tuple(j.id for j in jobs),
                                                         (True,) * len(jobs))
                            await ctx.reply(env, reply)
                        case storage.ListJobs():
                            self.lists_held += 1
                            nursery.start_soon(self._answer_later, ctx, env)
                        case _:
                            await ctx.node.reply_error(env, TypeError("not in this test"))

    async def _answer_later(self, ctx: ActorContext, env: Any) -> None:
        await self.release.wait()
        await ctx.reply(env, storage.ListJobsReply((), None))


async def start(node: Node, store: SlowReads) -> None:
    at = await node.start_actor("storage", store.run)
    await node.start_actor(BROKER, partial(run_broker, app=app, storage=at))


async def test_a_slow_read_does_not_hold_up_the_enqueues_behind_it(autojump_clock: Any) -> None:
    store = SlowReads()
    async with open_node("n1") as node, trio.open_nursery() as nursery:
        await start(node, store)
        pages: list[proto.JobPage] = []

        async def list_jobs() -> None:
            pages.append(await node.call(Address("n1", BROKER), proto.ListJobs(limit=5),
                                         timeout_s=60))

        for _ in range(3):
            nursery.start_soon(list_jobs)
        await trio.testing.wait_all_tasks_blocked()
        assert store.lists_held == 3
        spec = proto.JobSpec("add", pack_args([1, 2]))
        with trio.fail_after(1):
            reply = await broker.enqueue(node, "n1", [spec, spec])
        assert reply.created == (True, True) and len(set(reply.ids)) == 2
        assert pages == []  # the reads are still at storage
        store.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert pages == [proto.JobPage((), None)] * 3


async def test_an_unknown_request_is_answered_with_an_error_not_a_timeout(
        autojump_clock: Any) -> None:
    async with open_node("n1") as node:
        await start(node, SlowReads())
        with trio.fail_after(1), pytest.raises(RemoteActorError) as info:
            await node.call(Address("n1", BROKER), storage.AckJobs(()), timeout_s=30)
        assert (info.value.type_name, info.value.message) == (
            "TypeError", "the broker does not accept AckJobs")


async def test_a_storage_failure_is_relayed_and_the_broker_goes_on(autojump_clock: Any) -> None:
    async with open_node("n1") as node:
        await start(node, SlowReads())
        with pytest.raises(RemoteActorError) as info:
            await broker.get_jobs(node, "n1", ["a"])
        assert info.value.type_name == "RemoteActorError"
        assert "TypeError: not in this test" in info.value.message
        spec = proto.JobSpec("add", pack_args([1, 2]))
        assert (await broker.enqueue(node, "n1", [spec])).created == (True,)
