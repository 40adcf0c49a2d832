from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from gotask import transports
from gotask._errors import AuthenticationError
from gotask.runtime import open_node
from gotask.transports import LinkOptions, MemoryNetwork

from .conformance import OpenPair, Pair, Ping, Pong, TransportContract, echo


@asynccontextmanager
async def open_memory_pair(options: LinkOptions | None = None) -> AsyncIterator[Pair]:
    options = options or LinkOptions()
    net = MemoryNetwork()
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b, options=options)
        link = await net.connect(a, "b", options=options)
        yield Pair(a, b, link.aclose)


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def open_pair(self) -> OpenPair:
        return open_memory_pair


async def test_unknown_name_is_refused() -> None:
    async with open_node("a") as a:
        with pytest.raises(ConnectionRefusedError, match="nothing serves 'nowhere'"):
            await MemoryNetwork().connect(a, "nowhere")


async def test_name_is_free_again_when_the_serving_node_stops() -> None:
    net = MemoryNetwork()
    async with open_node("b") as b:
        await net.serve(b)
        with pytest.raises(ValueError, match="already served"):
            await net.serve(b)
    async with open_node("a") as a:
        with pytest.raises(ConnectionRefusedError):
            await net.connect(a, "b")


async def test_secret_is_checked(autojump_clock: Any) -> None:
    net = MemoryNetwork()
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b, secret=b"right")
        before = trio.current_time()
        # The listener checks the dialer's proof first and refuses it, after the delay.
        with pytest.raises(AuthenticationError, match="refused the handshake: auth"):
            await net.connect(a, "b", secret=b"wrong")
        assert trio.current_time() - before >= LinkOptions().auth_failure_delay_s
        before = trio.current_time()
        with pytest.raises(AuthenticationError, match="refused the handshake: auth"):
            await net.connect(a, "b")
        assert trio.current_time() - before >= LinkOptions().auth_failure_delay_s
        addr = await b.start_actor("echo", echo)
        await net.connect(a, "b", secret=b"right")
        assert await a.call(addr, Ping(1)) == Pong(1)


async def test_heartbeats_keep_an_idle_link_up(autojump_clock: Any) -> None:
    net = MemoryNetwork()
    options = LinkOptions(heartbeat_s=1.0)
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b, options=options)
        link = await net.connect(a, "b", options=options)
        await trio.sleep(60)
        assert link.close_reason is None
        assert a.connected_nodes() == ["b"] and b.connected_nodes() == ["a"]


async def test_exports_resolve() -> None:
    for name in transports.__all__:
        assert getattr(transports, name) is not None
