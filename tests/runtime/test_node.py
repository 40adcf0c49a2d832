from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gotask._errors import ActorNotFound, CallTimeout, RemoteActorError, SupervisorGaveUp
from gotask.runtime import ActorContext, Address, Respond, Send, message, open_node


@message("t.rt.ping")
@attrs.frozen
class Ping:
    n: int


@message("t.rt.pong")
@attrs.frozen
class Pong:
    n: int


async def echo(ctx: ActorContext, *, task_status: Any) -> None:
    task_status.started()
    while True:
        for env in await ctx.receive_batch():
            if env.msg == Ping(-1):
                raise ValueError("asked to fail")
            await ctx.reply(env, Pong(env.msg.n))


async def test_call_returns_reply() -> None:
    async with open_node("a") as node:
        addr = await node.start_actor("echo", echo)
        assert await node.call(addr, Ping(7)) == Pong(7)


async def test_remote_error_carries_type_and_traceback(autojump_clock: Any) -> None:
    async def failing(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                try:
                    raise KeyError("missing thing")
                except KeyError as exc:
                    await ctx.node.reply_error(env, exc)

    async with open_node("a") as node:
        addr = await node.start_actor("f", failing)
        with pytest.raises(RemoteActorError) as info:
            await node.call(addr, Ping(1))
        assert info.value.type_name == "KeyError"
        assert "missing thing" in info.value.message
        assert "raise KeyError" in info.value.traceback_text


async def test_call_times_out(autojump_clock: Any) -> None:
    async def silent(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with open_node("a") as node:
        addr = await node.start_actor("silent", silent)
        with pytest.raises(CallTimeout):
            await node.call(addr, Ping(1), timeout_s=2)


async def test_send_to_unknown_actor_or_node_raises() -> None:
    async with open_node("a") as node:
        with pytest.raises(ActorNotFound, match="no actor 'nobody'"):
            await node.send(Address("a", "nobody"), Ping(1))
        with pytest.raises(ActorNotFound, match="node 'b' is not connected"):
            await node.call(Address("b", "x"), Ping(1))


async def test_names_are_unique_and_dollar_is_reserved() -> None:
    async with open_node("a") as node:
        await node.start_actor("echo", echo)
        with pytest.raises(ValueError, match="taken or reserved"):
            node.open_inbox("echo")
        with pytest.raises(ValueError, match="taken or reserved"):
            node.open_inbox("$x")


async def test_full_inbox_is_backpressure_not_loss() -> None:
    got: list[int] = []
    gate = trio.Event()

    async def slow(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        await gate.wait()
        while True:
            got.extend(env.msg.n for env in await ctx.receive_batch())

    async with open_node("a") as node:
        addr = await node.start_actor("slow", slow, inbox_max=4)
        for i in range(4):
            node.send_nowait(addr, Ping(i))
        with pytest.raises(trio.WouldBlock):
            node.send_nowait(addr, Ping(99))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.send, addr, Ping(4))
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [0, 1, 2, 3, 4]


async def test_crashed_actor_restarts_and_keeps_its_inbox(autojump_clock: Any) -> None:
    async with open_node("a") as node:
        addr = await node.start_actor("echo", echo, intensity=3, period_s=10)
        node.send_nowait(addr, Ping(-1))
        await trio.testing.wait_all_tasks_blocked()
        node.send_nowait(addr, Ping(1))
        node.send_nowait(addr, Ping(2))
        assert await node.call(addr, Ping(5)) == Pong(5)


async def test_supervisor_gives_up_past_intensity(autojump_clock: Any) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(SupervisorGaveUp, match="'echo' crashed 3 times")):
        async with open_node("a") as node:
            addr = await node.start_actor("echo", echo, intensity=2, period_s=10)
            for _ in range(3):
                await node.send(addr, Ping(-1))
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1)
        pytest.fail("the supervisor did not give up")


async def test_crashes_spread_out_in_time_never_give_up(autojump_clock: Any) -> None:
    async with open_node("a") as node:
        addr = await node.start_actor("echo", echo, intensity=1, period_s=1)
        for _ in range(5):
            await node.send(addr, Ping(-1))
            await trio.sleep(2)
        assert await node.call(addr, Ping(3)) == Pong(3)


async def test_actor_that_fails_before_ready_is_retried_then_gives_up(autojump_clock: Any) -> None:
    tries = 0

    async def broken(ctx: ActorContext, *, task_status: Any) -> None:
        nonlocal tries
        tries += 1
        raise OSError("cannot start")

    with pytest.RaisesGroup(pytest.RaisesExc(SupervisorGaveUp, match="OSError: cannot start")):
        async with open_node("a") as node:
            await node.start_actor("broken", broken, intensity=2)
    assert tries == 3


async def test_outgoing_values_are_dispatched_in_order() -> None:
    seen: list[Any] = []

    async def sink(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            seen.extend(env.msg for env in await ctx.receive_batch())

    async def relay(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                dst = Address("a", "sink")
                await ctx.dispatch([Send(dst, Pong(1)), Send(dst, Pong(2)), Respond(env, Pong(3))])

    async with open_node("a") as node:
        await node.start_actor("sink", sink)
        addr = await node.start_actor("relay", relay)
        assert await node.call(addr, Ping(0)) == Pong(3)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [Pong(1), Pong(2)]
