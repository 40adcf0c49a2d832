"""The transport contract: what every transport must do, run against each of them.

Fixture contract (the only thing a subclass of `TransportContract` provides):

    open_pair  a fixture whose value is a factory `open_pair(options=None)` returning an
               async context manager that yields a `Pair`:
                 pair.a, pair.b   two open nodes named "a" and "b"; `a` dialed `b`, and
                                  that one link carries traffic both ways;
                 pair.sever()     async; breaks that connection abruptly, as a network
                                  failure would (both nodes must notice).
               `options` is a `LinkOptions` or None for the transport's defaults; a
               transport without such knobs may ignore it.

The tests run in real time (TCP cannot run on a mock clock) and each takes well under a
second on a healthy transport; every wait is bounded by `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio

from gotask._errors import ActorNotFound, LocalProtocolError, RemoteActorError
from gotask.runtime import ActorContext, Address, message
from gotask.runtime.node import Node
from gotask.transports import LinkOptions

__all__ = ["OpenPair", "Pair", "TransportContract", "wait_connected"]

#: Body size that still fits the default 1 MiB frame with the envelope around it.
NEAR_LIMIT_BYTES = (1 << 20) - 256


@message("t.tr.ping")
@attrs.frozen
class Ping:
    n: int


@message("t.tr.pong")
@attrs.frozen
class Pong:
    n: int


@message("t.tr.blob")
@attrs.frozen
class Blob:
    data: bytes


@message("t.tr.fail")
@attrs.frozen
class Fail:
    text: str


@attrs.frozen
class Unregistered:
    n: int


@attrs.frozen
class Pair:
    """Two nodes joined by one link; see the module docstring."""

    a: Node
    b: Node
    sever: Callable[[], Awaitable[None]]


OpenPair = Callable[..., AbstractAsyncContextManager[Pair]]


async def wait_connected(node: Node, peer: str, timeout_s: float = 5.0) -> None:
    """Wait until `node` routes to `peer` (the listener attaches just after the dialer)."""
    with trio.fail_after(timeout_s):
        while peer not in node.connected_nodes():
            await trio.sleep(0.002)


async def echo(ctx: ActorContext, *, task_status: Any) -> None:
    """Pong(n) for Ping(n), Pong(len) for Blob, an error reply for Fail."""
    task_status.started()
    while True:
        for env in await ctx.receive_batch():
            match env.msg:
                case Ping(n):
                    await ctx.reply(env, Pong(n))
                case Blob(data):
                    await ctx.reply(env, Pong(len(data)))
                case Fail(text):
                    try:
                        raise ValueError(text)
                    except ValueError as exc:
                        await ctx.node.reply_error(env, exc)


def collector(got: list[int], want: int, done: trio.Event, pause_s: float = 0.0) -> Any:
    """An actor appending each Ping's n to `got`, setting `done` at `want` messages."""

    async def run(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            batch = await ctx.receive_batch()
            got.extend(env.msg.n for env in batch)
            if len(got) >= want:
                done.set()
            if pause_s:
                await trio.sleep(pause_s)

    return run


def silent(arrived: trio.Event) -> Any:
    """An actor that never answers; sets `arrived` when a message reached it."""

    async def run(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            await ctx.receive_batch()
            arrived.set()

    return run


class TransportContract:
    """Subclass and provide the `open_pair` fixture (see the module docstring)."""

    async def test_send_arrives_in_order(self, open_pair: OpenPair) -> None:
        got: list[int] = []
        done = trio.Event()
        async with open_pair() as pair:
            addr = await pair.b.start_actor("sink", collector(got, 10_000, done))
            for i in range(10_000):
                await pair.a.send(addr, Ping(i))
            with trio.fail_after(10):
                await done.wait()
        assert got == list(range(10_000))

    async def test_call_both_ways_over_one_link(self, open_pair: OpenPair) -> None:
        async with open_pair() as pair:
            at_b = await pair.b.start_actor("echo", echo)
            at_a = await pair.a.start_actor("echo", echo)
            assert await pair.a.call(at_b, Ping(1), timeout_s=5) == Pong(1)
            await wait_connected(pair.b, "a")
            assert await pair.b.call(at_a, Ping(2), timeout_s=5) == Pong(2)
            results = []
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(_call_into, pair.a, at_b, i, results)
                    nursery.start_soon(_call_into, pair.b, at_a, -i, results)
            assert sorted(results) == sorted([*range(50), *(-i for i in range(50))])

    async def test_remote_error_carries_type_and_traceback(self, open_pair: OpenPair) -> None:
        async with open_pair() as pair:
            addr = await pair.b.start_actor("echo", echo)
            with pytest.raises(RemoteActorError) as info:
                await pair.a.call(addr, Fail("it broke"), timeout_s=5)
        assert info.value.type_name == "ValueError"
        assert info.value.message == "it broke"
        assert "raise ValueError(text)" in info.value.traceback_text

    async def test_call_to_unknown_remote_actor_fails_clearly(self, open_pair: OpenPair) -> None:
        async with open_pair() as pair:
            with pytest.raises(RemoteActorError, match="no actor 'nobody' on node 'b'") as info:
                await pair.a.call(Address("b", "nobody"), Ping(1), timeout_s=5)
        assert info.value.type_name == "ActorNotFound"

    async def test_frame_limit(self, open_pair: OpenPair) -> None:
        async with open_pair() as pair:
            addr = await pair.b.start_actor("echo", echo)
            big = Blob(b"x" * NEAR_LIMIT_BYTES)
            assert await pair.a.call(addr, big, timeout_s=10) == Pong(NEAR_LIMIT_BYTES)
            with pytest.raises(LocalProtocolError, match="frame limit"):
                await pair.a.send(addr, Blob(b"x" * (1 << 20)))
            assert await pair.a.call(addr, Ping(3), timeout_s=5) == Pong(3)

    async def test_unregistered_message_raises_at_sender(self, open_pair: OpenPair) -> None:
        async with open_pair() as pair:
            addr = await pair.b.start_actor("echo", echo)
            with pytest.raises(LocalProtocolError, match="Unregistered"):
                await pair.a.send(addr, Unregistered(1))
            with pytest.raises(LocalProtocolError, match="Unregistered"):
                pair.a.send_nowait(addr, Unregistered(1))
            assert await pair.a.call(addr, Ping(4), timeout_s=5) == Pong(4)

    async def test_link_loss_fails_pending_calls_promptly(self, open_pair: OpenPair) -> None:
        at_a, at_b = trio.Event(), trio.Event()
        errors: list[BaseException] = []
        async with open_pair() as pair:
            silent_b = await pair.b.start_actor("silent", silent(at_b))
            silent_a = await pair.a.start_actor("silent", silent(at_a))
            await wait_connected(pair.b, "a")
            with trio.fail_after(3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_call_expecting_error, pair.a, silent_b, errors)
                    nursery.start_soon(_call_expecting_error, pair.b, silent_a, errors)
                    await at_a.wait()
                    await at_b.wait()
                    await pair.sever()
        assert len(errors) == 2
        assert all(isinstance(err, ActorNotFound) for err in errors), errors

    async def test_backpressure_loses_nothing(self, open_pair: OpenPair) -> None:
        got: list[int] = []
        done = trio.Event()
        count, blocked = 600, 0
        options = LinkOptions(outbound_max=8)
        async with open_pair(options) as pair:
            run = collector(got, count, done, pause_s=0.001)
            addr = await pair.b.start_actor("slow", run, inbox_max=2)
            for i in range(count):
                try:
                    pair.a.send_nowait(addr, Ping(i))
                except trio.WouldBlock:
                    blocked += 1
                    await pair.a.send(addr, Ping(i))
            with trio.fail_after(10):
                await done.wait()
        assert got == list(range(count))
        assert blocked > 0, "the sender never felt backpressure"


async def _call_into(node: Node, addr: Address, n: int, results: list[int]) -> None:
    reply = await node.call(addr, Ping(n), timeout_s=5)
    results.append(reply.n)


async def _call_expecting_error(node: Node, addr: Address, errors: list[BaseException]) -> None:
    try:
        await node.call(addr, Ping(0), timeout_s=30)
    except Exception as exc:
        errors.append(exc)
