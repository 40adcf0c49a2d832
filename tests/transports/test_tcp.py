from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trustme

from gotask._errors import AuthenticationError, ConfigError
from gotask.runtime import open_node
from gotask.runtime.node import Node
from gotask.transports import LinkOptions, connect_tcp, maintain_link, serve_tcp
from gotask.transports._handshake import Ping as WirePing
from gotask.transports.tcp import backoff_s, is_loopback

from .conformance import OpenPair, Pair, Ping, Pong, TransportContract, echo, wait_connected

SECRET = b"a secret shared by the test nodes"
FAST = LinkOptions(auth_failure_delay_s=0.05)


async def start_server(
    node: Node, *, secret: bytes | None = SECRET, options: LinkOptions = FAST, **kw: Any
) -> int:
    port: int = await node.nursery.start(
        partial(serve_tcp, node, "127.0.0.1", 0, secret=secret, options=options, **kw)
    )
    return port


@asynccontextmanager
async def open_tcp_pair(options: LinkOptions | None = None) -> AsyncIterator[Pair]:
    options = options or FAST
    async with open_node("a") as a, open_node("b") as b:
        port = await start_server(b, options=options)
        link = await connect_tcp(a, "127.0.0.1", port, secret=SECRET, options=options)
        yield Pair(a, b, link.aclose)


class TestTcpTransport(TransportContract):
    @pytest.fixture
    def open_pair(self) -> OpenPair:
        return open_tcp_pair


async def test_auth_with_right_wrong_and_missing_secret() -> None:
    async with open_node("a") as a, open_node("b") as b, open_node("c") as c:
        addr = await b.start_actor("echo", echo)
        with_secret = await start_server(b)
        without_secret = await start_server(c, secret=None)
        # The listener checks the dialer's proof first: a wrong secret is refused there.
        with pytest.raises(AuthenticationError, match="refused the handshake: auth"):
            await connect_tcp(a, "127.0.0.1", with_secret, secret=b"wrong", options=FAST)
        with pytest.raises(AuthenticationError, match="refused the handshake: auth"):
            await connect_tcp(a, "127.0.0.1", with_secret, secret=None, options=FAST)
        with pytest.raises(AuthenticationError, match="did not prove the shared secret"):
            await connect_tcp(a, "127.0.0.1", without_secret, secret=SECRET, options=FAST)
        assert a.connected_nodes() == [] and b.connected_nodes() == []
        await connect_tcp(a, "127.0.0.1", with_secret, secret=SECRET, options=FAST)
        assert await a.call(addr, Ping(1), timeout_s=5) == Pong(1)
        await connect_tcp(a, "127.0.0.1", without_secret, secret=None, options=FAST)
        assert a.connected_nodes() == ["b", "c"]


async def test_auth_failure_answers_after_the_delay() -> None:
    options = LinkOptions(auth_failure_delay_s=0.3)
    async with open_node("a") as a, open_node("b") as b:
        port = await start_server(b, options=options)
        started = trio.current_time()
        with pytest.raises(AuthenticationError):
            await connect_tcp(a, "127.0.0.1", port, secret=None)
        assert trio.current_time() - started >= 0.3


async def test_tls_handshake_and_call() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("gotask.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with open_node("a") as a, open_node("b") as b:
        addr = await b.start_actor("echo", echo)
        port = await start_server(b, ssl_context=server_ctx)
        link = await connect_tcp(a, "127.0.0.1", port, secret=SECRET, ssl_context=client_ctx,
                                 server_hostname="gotask.test", options=FAST)
        assert link.peer == "b"
        assert await a.call(addr, Ping(7), timeout_s=5) == Pong(7)
        untrusting = ssl.create_default_context()
        with pytest.raises(ConnectionError):
            await connect_tcp(a, "127.0.0.1", port, secret=SECRET, ssl_context=untrusting,
                              server_hostname="gotask.test", options=FAST)
        assert await a.call(addr, Ping(8), timeout_s=5) == Pong(8)


async def test_public_bind_needs_a_secret_or_insecure() -> None:
    async with open_node("b") as b:
        with pytest.raises(ConfigError, match="without a secret"):
            await serve_tcp(b, "0.0.0.0", 0, secret=None)
        with pytest.raises(ConfigError, match="all interfaces"):
            await serve_tcp(b, "", 0, secret=None)
        assert await start_server(b, secret=None) > 0
        port = await b.nursery.start(partial(serve_tcp, b, "0.0.0.0", 0, secret=None,
                                             insecure=True))
        assert port > 0
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")


async def test_maintain_link_reconnects_after_the_listener_restarts() -> None:
    serve = partial(serve_tcp, secret=SECRET, options=FAST)
    async with open_node("a") as a, open_node("b") as b:
        addr = await b.start_actor("echo", echo)
        async with trio.open_nursery() as listener:
            port = await listener.start(serve, b, "127.0.0.1", 0)
            await a.nursery.start(partial(maintain_link, a, "127.0.0.1", port, secret=SECRET,
                                          options=FAST, backoff_base_s=0.02, backoff_cap_s=0.2))
            assert await a.call(addr, Ping(1), timeout_s=5) == Pong(1)
            listener.cancel_scope.cancel()
        with trio.fail_after(5):
            while "b" in a.connected_nodes():
                await trio.sleep(0.005)
        await b.nursery.start(serve, b, "127.0.0.1", port)
        await wait_connected(a, "b")
        assert await a.call(addr, Ping(2), timeout_s=5) == Pong(2)


async def test_backoff_is_jittered_exponential_and_capped() -> None:
    async with open_node("a") as a:
        delays = [backoff_s(a, n, 0.1, 5.0) for n in range(12)]
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(2.5 <= d <= 5.0 for d in delays[7:])


async def test_heartbeat_keeps_an_idle_link_alive() -> None:
    options = LinkOptions(heartbeat_s=0.05, idle_timeout_s=0.15)
    async with open_tcp_pair(options) as pair:
        addr = await pair.b.start_actor("echo", echo)
        await trio.sleep(0.6)
        assert pair.a.connected_nodes() == ["b"] and pair.b.connected_nodes() == ["a"]
        assert await pair.a.call(addr, Ping(1), timeout_s=5) == Pong(1)


async def test_idle_timeout_closes_a_silent_peer(raw_peer: Any) -> None:
    options = LinkOptions(heartbeat_s=0.1, idle_timeout_s=0.3)
    async with open_node("b") as b:
        port = await start_server(b, options=options)
        raw = await raw_peer.connect(port)
        await raw.handshake("mute", SECRET)
        await wait_connected(b, "mute")
        started = trio.current_time()
        got = await raw.receive_until_closed(timeout_s=3)
        assert 0.25 <= trio.current_time() - started <= 1.5
        assert got and all(isinstance(msg, WirePing) for msg in got)
        assert "mute" not in b.connected_nodes()


async def test_clients_host_no_actors_and_newest_link_wins() -> None:
    async with open_node("b") as b, open_node("cli") as cli:
        addr = await b.start_actor("echo", echo)
        port = await start_server(b)
        first = await connect_tcp(cli, "127.0.0.1", port, secret=SECRET, options=FAST)
        second = await connect_tcp(cli, "127.0.0.1", port, secret=SECRET, options=FAST)
        assert cli.actor_names() == []
        assert await cli.call(addr, Ping(1), timeout_s=5) == Pong(1)
        await first.aclose()
        assert second.close_reason is None and cli.connected_nodes() == ["b"]
        assert await cli.call(addr, Ping(2), timeout_s=5) == Pong(2)
