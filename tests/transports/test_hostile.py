"""Attacks on a running node over real sockets, while a well-behaved peer keeps calling.

Each test asserts what the attacker sees (an error frame, then the connection closed)
and that the good peer's calls kept succeeding during and after the attack.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import msgpack
import trio

from gotask._errors import ActorNotFound
from gotask.runtime import Address, open_node
from gotask.runtime.message import Envelope, ErrorReply, Reply
from gotask.runtime.node import Node
from gotask.transports import LinkOptions, connect_tcp, serve_tcp
from gotask.transports._handshake import Hello, WireError
from gotask.transports._handshake import Ping as WirePing
from gotask.transports._wire import CLOSED, encode, frame

from .conformance import Blob, Ping, Pong, echo, wait_connected

SECRET = b"hostile-test-secret"
OPTIONS = LinkOptions(
    handshake_timeout_s=1.0,
    frame_timeout_s=1.0,
    write_timeout_s=0.5,
    auth_failure_delay_s=0.05,
    unauthenticated_max=4,
)


@attrs.define
class Target:
    """A node under attack and a good peer calling its echo actor all along."""

    node: Node
    port: int
    calls_ok: int = 0
    errors: list[BaseException] = attrs.Factory(list)

    async def keep_calling(self, good: Node) -> None:
        addr = Address(self.node.name, "echo")
        while True:
            n = self.calls_ok
            try:
                assert await good.call(addr, Ping(n), timeout_s=2) == Pong(n)
                self.calls_ok += 1
            except Exception as exc:
                self.errors.append(exc)
            await trio.sleep(0.01)

    async def assert_good_peer_served(self) -> None:
        """The good peer made progress since now, and nothing failed."""
        seen = self.calls_ok
        with trio.fail_after(3):
            while self.calls_ok < seen + 3:
                await trio.sleep(0.01)
        assert self.errors == []


@asynccontextmanager
async def open_target() -> AsyncIterator[Target]:
    async with open_node("srv") as srv, open_node("good") as good:
        await srv.start_actor("echo", echo)
        serve = partial(serve_tcp, srv, "127.0.0.1", 0, secret=SECRET, options=OPTIONS)
        target = Target(srv, await srv.nursery.start(serve))
        await connect_tcp(good, "127.0.0.1", target.port, secret=SECRET, options=OPTIONS)
        good.nursery.start_soon(target.keep_calling, good)
        await target.assert_good_peer_served()
        yield target
        await target.assert_good_peer_served()


def fatal_error(got: list[object], code: str) -> WireError:
    errors = [msg for msg in got if isinstance(msg, WireError)]
    assert errors, f"no WireError before the close: {got}"
    assert errors[0].code == code and errors[0].fatal, errors[0]
    return errors[0]


async def test_random_garbage_gets_an_error_frame_then_close(raw_peer: Any) -> None:
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        await raw.send_raw(random.Random(7).randbytes(64))
        fatal_error(await raw.receive_until_closed(), "framing")
        await target.assert_good_peer_served()


async def test_4gib_length_prefix_is_refused_at_once(raw_peer: Any) -> None:
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        started = trio.current_time()
        await raw.send_raw(b"\xff\xff\xff\xff")
        error = fatal_error(await raw.receive_until_closed(), "framing")
        assert "exceeds" in error.message
        assert trio.current_time() - started < 0.5


async def test_envelope_before_authentication_is_refused(raw_peer: Any) -> None:
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        await raw.send_raw(frame(encode(Envelope(Address("srv", "echo"), None, 0, Ping(1)))))
        error = fatal_error(await raw.receive_until_closed(), "handshake")
        assert "Envelope" in error.message
        assert target.node.connected_nodes() == ["good"]


async def test_slowloris_in_the_handshake_is_cut_off(raw_peer: Any) -> None:
    hello = frame(encode(Hello((1,), "slow", b"n" * 32)))
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)

        async def drip() -> None:
            for byte in hello:
                await raw.send_raw(bytes([byte]))
                await trio.sleep(0.2)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            got = await raw.receive_until_closed(timeout_s=3)
            nursery.cancel_scope.cancel()
        assert 0.9 <= trio.current_time() - started <= 2.0
        assert got == [WireError("handshake", "handshake timed out", fatal=True)]


async def test_slow_frame_after_authentication_is_cut_off(raw_peer: Any) -> None:
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        await raw.handshake("drip", SECRET)
        await raw.send_raw(b"\x00\x00\x01\x00")  # a 256-byte frame that never completes

        async def drip() -> None:
            while True:
                await trio.sleep(0.1)
                await raw.send_raw(b"\x90")

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            await raw.receive_until_closed(timeout_s=3)
            nursery.cancel_scope.cancel()
        assert 0.9 <= trio.current_time() - started <= 2.0
        assert "drip" not in target.node.connected_nodes()


async def test_invalid_message_after_auth_gets_an_error_reply(raw_peer: Any) -> None:
    bad_call = msgpack.packb(
        ["env", ["addr", "srv", "echo"], ["addr", "raw", "$call"], 7, ["t.tr.ping", "seven"]]
    )
    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        await raw.handshake("raw", SECRET)
        await raw.send_raw(frame(bad_call))
        error, reply = await receive_skipping_pings(raw, 2)
        assert error.code == "invalid" and not error.fatal and "Ping.n" in error.message
        assert isinstance(reply, Reply) and reply.dst_node == "raw" and reply.corr == 7
        assert isinstance(reply.msg, ErrorReply) and reply.msg.type_name == "InvalidMessage"
        assert "Ping.n" in reply.msg.message
        good_call = Envelope(Address("srv", "echo"), Address("raw", "$call"), 8, Ping(8))
        await raw.send(good_call)
        assert await receive_skipping_pings(raw, 1) == [Reply("raw", 8, Pong(8))]


async def test_invalid_message_between_good_ones_in_one_chunk_loses_neither(
    raw_peer: Any,
) -> None:
    def call(corr: int, n: object) -> bytes:
        return frame(msgpack.packb(
            ["env", ["addr", "srv", "echo"], ["addr", "raw", "$call"], corr, ["t.tr.ping", n]]
        ))

    async with open_target() as target:
        raw = await raw_peer.connect(target.port)
        await raw.handshake("raw", SECRET)
        await raw.send_raw(call(5, 5) + call(6, "six") + call(7, 7))
        got = await receive_skipping_pings(raw, 4)
        replies = {msg.corr: msg.msg for msg in got if isinstance(msg, Reply)}
        assert replies.keys() == {5, 6, 7}
        assert replies[5] == Pong(5) and replies[7] == Pong(7)
        assert isinstance(replies[6], ErrorReply) and "Ping.n" in replies[6].message
        [error] = [msg for msg in got if isinstance(msg, WireError)]
        assert error.code == "invalid" and not error.fatal


async def test_peer_that_never_reads_is_disconnected(raw_peer: Any) -> None:
    outcome: list[BaseException] = []

    async def flood(node: Node) -> None:
        blob = Blob(b"z" * (64 << 10))
        try:
            while True:
                await node.send(Address("sink", "anyone"), blob)
        except (ActorNotFound, trio.BrokenResourceError) as exc:
            outcome.append(exc)

    async with open_target() as target:
        raw = await raw_peer.connect(target.port, rcvbuf_bytes=4096)
        await raw.handshake("sink", SECRET)
        await wait_connected(target.node, "sink")
        with trio.fail_after(5):
            await flood(target.node)
            await target.assert_good_peer_served()
        assert "sink" not in target.node.connected_nodes()
        assert len(outcome) == 1
        await raw.aclose()


async def test_unauthenticated_connections_are_capped_oldest_idle_evicted(raw_peer: Any) -> None:
    async with open_target() as target:
        idle = [await raw_peer.connect(target.port) for _ in range(OPTIONS.unauthenticated_max)]
        await trio.sleep(0.05)
        extra = await raw_peer.connect(target.port)
        started = trio.current_time()
        assert await idle[0].receive(timeout_s=1) is CLOSED
        assert trio.current_time() - started < 0.5
        await extra.handshake("extra", SECRET)
        await target.assert_good_peer_served()
        for peer in [*idle, extra]:
            await peer.aclose()


async def receive_skipping_pings(raw: Any, count: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < count:
        msg = await raw.receive()
        if not isinstance(msg, WirePing):
            got.append(msg)
    return got
