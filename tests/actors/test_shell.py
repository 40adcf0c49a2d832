"""The shell every pure core runs in, with a real node: unknown messages, calls, ticks."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from gotask._errors import RemoteActorError
from gotask.actors._effects import Called
from gotask.actors.scheduler import PROMOTE, PROMOTE_LIMIT, run_scheduler
from gotask.actors.storage.base import PromoteDue, PromoteDueReply
from gotask.runtime import ActorContext, Ok, open_node


async def fake_storage(
    asked: list[float], ctx: ActorContext, *, task_status: trio.TaskStatus[None]
) -> None:
    """A storage that answers every PromoteDue with nothing promoted, noting when."""
    task_status.started()
    while True:
        for env in await ctx.receive_batch():
            assert isinstance(env.msg, PromoteDue)
            asked.append(trio.current_time())
            await ctx.reply(env, PromoteDueReply(0))


async def test_an_unknown_request_is_answered_with_an_error_not_dropped() -> None:
    async with open_node("n1") as node:
        storage = node.address("storage")
        addr = await node.start_actor("scheduler", functools.partial(
            run_scheduler, storage=storage, interval_s=3600))
        with pytest.raises(RemoteActorError) as info:
            await node.call(addr, Ok(), timeout_s=5)
        assert info.value.type_name == "InvalidMessage"
        assert "Ok" in info.value.message
        node.nursery.cancel_scope.cancel()


async def test_calls_run_beside_the_inbox_and_ticks_follow_the_core_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[float] = []
    storage = functools.partial(fake_storage, asked)
    async with open_node("n1") as node:
        start = trio.current_time()
        store = await node.start_actor("storage", storage)
        await node.start_actor("scheduler", functools.partial(
            run_scheduler, storage=store, interval_s=2.0))
        await trio.sleep(7.0)
        node.nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t in asked] == [2.0, 4.0, 6.0]


async def test_answers_to_calls_of_an_earlier_life_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[float] = []
    storage = functools.partial(fake_storage, asked)
    async with open_node("n1") as node:
        start = trio.current_time()
        store = await node.start_actor("storage", storage)
        addr = await node.start_actor("scheduler", functools.partial(
            run_scheduler, storage=store, interval_s=100.0))
        await trio.sleep(1.0)
        # A full batch answered would make the core promote again at once, were it
        # taken for an answer to one of this life's calls.
        await node.send(addr, Called(PROMOTE, PromoteDueReply(PROMOTE_LIMIT)))
        await trio.sleep(150.0)
        node.nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t in asked] == [100.0]
