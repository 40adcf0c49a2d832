"""In-process transport: nodes of one process linked through in-memory byte pipes.

Rules of this module:
- Nothing is special-cased: a memory link is a `StreamLink` (see `_link.py`) over a pair
  of byte pipes, with the same handshake, codec, limits and timeouts as TCP. What works
  here works over the network, except latency.
- Pipes are bounded (`chunks_max` writes in flight per direction), so a full inbox on one
  node pushes back on the sender exactly as TCP flow control would.
- Listening is tied to the serving node: when its nursery closes, the name is free again.
  Dialing an unknown name raises `ConnectionRefusedError`, like a closed TCP port.
- No real IO and no clock of its own: it runs under trio's MockClock in simulations.
"""

from __future__ import annotations

import attrs
import trio

from gotask.runtime.node import Node

from ._admission import HandshakeGate
from ._link import LinkOptions, StreamLink
from ._link_dial import accept_link, dial_link

__all__ = ["MemoryNetwork"]

#: Writes buffered per pipe direction before `send_all` waits for the reader.
PIPE_CHUNKS_MAX = 16


class _PipeSendStream(trio.abc.SendStream):
    """The writing end of a one-way pipe of byte chunks."""

    def __init__(self, channel: trio.MemorySendChannel[bytes]) -> None:
        self._channel = channel

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            await self._channel.send(bytes(data))
        else:
            await trio.lowlevel.checkpoint()

    def send_all_nowait(self, data: bytes) -> int:
        """Hand `data` over without waiting; return its length.

        Raises:
            trio.WouldBlock: the pipe is full.
            trio.BrokenResourceError: the reading end is closed.
        """
        if data:
            self._channel.send_nowait(bytes(data))
        return len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._channel.close()
        await trio.lowlevel.checkpoint()


class _PipeReceiveStream(trio.abc.ReceiveStream):
    """The reading end of a one-way pipe; returns b"" once the writer closed."""

    def __init__(self, channel: trio.MemoryReceiveChannel[bytes]) -> None:
        self._channel = channel
        self._pending = b""
        self._offset = 0  # into _pending: slicing a large chunk repeatedly would copy it

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._offset < len(self._pending):
            await trio.lowlevel.checkpoint()
        else:
            try:
                self._pending, self._offset = await self._channel.receive(), 0
            except trio.EndOfChannel:
                return b""
        start = self._offset
        if start == 0 and (max_bytes is None or max_bytes >= len(self._pending)):
            self._offset = len(self._pending)
            return self._pending
        end = len(self._pending) if max_bytes is None else start + max_bytes
        self._offset = min(end, len(self._pending))
        return self._pending[start : self._offset]

    async def aclose(self) -> None:
        self._channel.close()
        await trio.lowlevel.checkpoint()


def pipe_pair(chunks_max: int = PIPE_CHUNKS_MAX) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected in-memory streams, each direction bounded to `chunks_max` writes."""
    a_send, b_receive = trio.open_memory_channel[bytes](chunks_max)
    b_send, a_receive = trio.open_memory_channel[bytes](chunks_max)
    a = trio.StapledStream(_PipeSendStream(a_send), _PipeReceiveStream(a_receive))
    b = trio.StapledStream(_PipeSendStream(b_send), _PipeReceiveStream(b_receive))
    return a, b


@attrs.frozen
class _Listener:
    node: Node
    secret: bytes | None
    options: LinkOptions
    gate: HandshakeGate


@attrs.define(eq=False)
class MemoryNetwork:
    """A namespace where nodes of one process serve and dial each other by name.

    Args:
        chunks_max: writes buffered per pipe direction (backpressure beyond that).
    """

    chunks_max: int = PIPE_CHUNKS_MAX
    _listeners: dict[str, _Listener] = attrs.field(factory=dict, init=False)

    async def serve(
        self,
        node: Node,
        name: str | None = None,
        *,
        secret: bytes | None = None,
        options: LinkOptions = LinkOptions(),  # noqa: B008 (frozen, so sharing it is safe)
    ) -> None:
        """Accept links to `name` (default: the node's name) while `node` is open.

        Raises:
            ValueError: another node already serves `name` here.
        """
        name = node.name if name is None else name
        if name in self._listeners:
            raise ValueError(f"{name!r} is already served on this memory network")
        listener = _Listener(node, secret, options, HandshakeGate(
            options.unauthenticated_max, options.unauthenticated_per_source_max))
        await node.nursery.start(self._hold, name, listener)

    async def _hold(
        self, name: str, listener: _Listener, *, task_status: trio.TaskStatus[None]
    ) -> None:
        self._listeners[name] = listener
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            del self._listeners[name]

    async def connect(
        self,
        node: Node,
        name: str,
        *,
        secret: bytes | None = None,
        options: LinkOptions = LinkOptions(),  # noqa: B008 (frozen, so sharing it is safe)
    ) -> StreamLink:
        """Dial the node serving `name`; return the link, attached and running.

        Raises:
            ConnectionRefusedError: nothing serves `name`.
            AuthenticationError: the secrets differ, or one side has none.
            TimeoutError: no handshake within `options.handshake_timeout_s`.
        """
        listener = self._listeners.get(name)
        if listener is None:
            raise ConnectionRefusedError(f"nothing serves {name!r} on this memory network")
        ours, theirs = pipe_pair(self.chunks_max)
        listener.node.nursery.start_soon(self._accept, listener, theirs, node.name)
        return await dial_link(node, ours, secret=secret, options=options,
                               peer_address=f"memory:{name}")

    @staticmethod
    async def _accept(listener: _Listener, stream: trio.abc.Stream, dialer: str) -> None:
        await accept_link(listener.node, stream, secret=listener.secret, options=listener.options,
                          gate=listener.gate, peer_address=f"memory:{dialer}")
