"""The link protocol driven by a plain blocking socket, as a sync client (issue 20) will.

A thread with a blocking socket and nothing else (no trio, no anyio) handshakes with a
real node over TCP, calls its echo actor, gets an error reply from a missing actor, and
times out a call to an actor that never answers, all with deadlines from `next_due`.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import time
from functools import partial
from typing import Any

import trio

from gotask._errors import CallTimeout
from gotask.runtime import ActorContext, Address, Envelope, ErrorReply, open_node
from gotask.transports import serve_tcp
from gotask.transports._handshake import NONCE_BYTES, DialerHandshake
from gotask.transports._link_protocol import (
    CallDone,
    HandshakeProtocol,
    LinkOptions,
    LinkProtocol,
)
from gotask.transports._wire import Connection

from .conformance import Ping, Pong, echo

SECRET = b"blocking-shell-secret"
ME = Address("sync-client", "$call")


class BlockingLink:
    """The whole shell: a blocking socket, a clock, the protocol."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.corr = itertools.count(1)
        shake = DialerHandshake(SECRET, ME.node, secrets.token_bytes(NONCE_BYTES))
        hs = HandshakeProtocol(Connection(), shake, now=time.monotonic(), timeout_s=5.0)
        self.sock.sendall(hs.start())
        while not hs.done:
            self.sock.sendall(hs.receive_data(self.sock.recv(65536)))
        self.proto = LinkProtocol(hs.conn, LinkOptions(), now=time.monotonic(), peer="srv",
                                  calls=True)

    def call(self, dst: Address, msg: object, timeout_s: float) -> CallDone:
        proto, corr = self.proto, next(self.corr)
        proto.push(proto.encode(Envelope(dst, ME, corr, msg)))
        proto.start_call(corr, time.monotonic(), timeout_s, type(msg).__name__)
        while True:
            self.sock.sendall(proto.take_outbound())
            now_s = time.monotonic()
            for done in proto.tick(now_s):
                return done
            proto.wait_reading(now_s)
            self.sock.settimeout(max(1e-3, proto.next_due(now_s) - now_s))
            try:
                proto.receive_data(self.sock.recv(65536))
            except TimeoutError:
                continue
            while events := proto.next_events():
                for event in events:
                    if isinstance(event, CallDone):
                        return event


def run_client(port: int) -> list[CallDone]:
    link = BlockingLink(port)
    try:
        return [
            link.call(Address("srv", "echo"), Ping(1), 5.0),
            link.call(Address("srv", "echo"), Ping(2), 5.0),
            link.call(Address("srv", "nobody"), Ping(3), 5.0),
            link.call(Address("srv", "silent"), Ping(4), 0.3),
        ]
    finally:
        link.sock.close()


async def silent(ctx: ActorContext, *, task_status: Any) -> None:
    task_status.started()
    while True:
        await ctx.receive_batch()


async def test_a_blocking_socket_loop_calls_a_node_through_the_protocol() -> None:
    async with open_node("srv") as srv:
        await srv.start_actor("echo", echo)
        await srv.start_actor("silent", silent)
        port = await srv.nursery.start(partial(serve_tcp, srv, "127.0.0.1", 0, secret=SECRET))
        first, second, missing, timed_out = await trio.to_thread.run_sync(run_client, port)
    assert (first, second) == (CallDone(1, Pong(1)), CallDone(2, Pong(2)))
    assert isinstance(missing.reply, ErrorReply) and missing.reply.type_name == "ActorNotFound"
    assert timed_out.corr == 4 and isinstance(timed_out.error, CallTimeout)
