"""Tools for transport tests: a raw socket peer that speaks the protocol by hand."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import pytest
import trio

from gotask.transports._handshake import DialerHandshake
from gotask.transports._wire import CLOSED, NEED_DATA, Connection


class RawPeer:
    """A TCP peer driven by the test: sends any bytes, parses frames with the codec.

    Every read is bounded by a timeout; EOF and a reset both count as "closed".
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection()
        self.conn.mark_authenticated()  # accept frames up to 1 MiB from the start
        self.closed = False

    @classmethod
    async def connect(cls, port: int, *, rcvbuf_bytes: int | None = None) -> RawPeer:
        """Connect to 127.0.0.1:`port`, optionally with a tiny receive buffer."""
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        await sock.connect(("127.0.0.1", port))
        return cls(trio.SocketStream(sock))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, msg: object) -> None:
        await self.stream.send_all(self.conn.send(msg))

    async def receive(self, timeout_s: float = 2.0) -> object:
        """The next message; CLOSED once the node closed the connection."""
        with trio.fail_after(timeout_s):
            while True:
                event = self.conn.next_event()
                if event is not NEED_DATA:
                    self.closed = event is CLOSED
                    return event
                try:
                    data = await self.stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, ConnectionResetError):
                    data = b""
                self.conn.receive_data(data)

    async def receive_until_closed(self, timeout_s: float = 2.0) -> list[object]:
        """Every message until the node closes the connection."""
        got: list[object] = []
        with trio.fail_after(timeout_s):
            while (msg := await self.receive(timeout_s)) is not CLOSED:
                got.append(msg)
        return got

    async def handshake(self, name: str, secret: bytes | None) -> None:
        """Authenticate as node `name`, by hand."""
        shake = DialerHandshake(secret, name, secrets.token_bytes(32))
        for msg in shake.start():
            await self.send(msg)
        while not shake.done:
            for reply in shake.receive(await self.receive()):
                await self.send(reply)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@pytest.fixture
def raw_peer() -> Any:
    """The `RawPeer` class: `await raw_peer.connect(port)`."""
    return RawPeer
