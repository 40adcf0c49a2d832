"""One link over any byte stream: the trio shell around the sans-IO link protocol.

Rules of this module:
- A link is one authenticated connection to one peer node over any `trio.abc.Stream`
  (TCP, TLS, in-memory pipes, a simulated network). Every transport goes through here, so
  all speak the same handshake, frames, limits and timeouts. What the link decides
  (control frames, invalid messages, deadlines, the bounded outbound buffer) lives in
  `_link_protocol`; this module only moves bytes and wakes tasks, as the client's anyio
  link does over the same protocol.
- Messages are encoded in `send_nowait`/`send`: the caller gets `LocalProtocolError` at
  once. One writer task sends everything queued in one `send_all`. A frame sent while the
  link is idle is written at once by its sender when the stream can write without
  blocking (as asyncio's transports do), sparing a task switch per request.
- The reader hands `Envelope`/`Reply` to the node through `node.deliver_nowait`, with no
  await per message, and only when that raises `trio.WouldBlock` (a full inbox or link)
  through `node.deliver`, which waits: backpressure flows back into the stream's flow
  control, by design. The `ErrorReply` for an invalid message goes the same way.
- On a plain TCP socket the reader reads the socket directly (`os.read` after
  `wait_readable`), skipping a read bound to fail when the last one emptied it; see
  `_receive_from_socket`. TLS and other streams go through `receive_some`.
- After the handshake one watchdog task per link ticks the protocol when its next
  deadline is due (heartbeats, silence, incomplete frames, stalled writes), so the
  per-message paths never open a cancel scope.
- Opening a link (the handshake, as dialer or listener) is `_link_dial`'s.
- A link's tasks never raise into the nursery running them (only `Cancelled` passes): a
  failure closes the link and is logged with the peer's address.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, cast

import trio

from gotask._errors import ActorNotFound, LocalProtocolError
from gotask.runtime.message import Envelope, Reply
from gotask.runtime.node import Node

from ._handshake import WireError
from ._link_protocol import (
    InvalidReceived,
    LinkClosed,
    LinkProtocol,
    failure_reason,
)
from ._link_protocol import LinkOptions as LinkOptions
from ._wire import Connection

__all__ = ["LinkOptions", "StreamLink"]

log = logging.getLogger("gotask.transport")

#: Largest slice handed to one `send_all`; the write timeout applies per slice.
WRITE_SLICE_BYTES: Final = 64 << 10
#: Least time between two frames written inline by their sender (see `_write_inline`).
INLINE_WRITE_GAP_S: Final = 50e-6
#: Longest wait to deliver a fatal error frame before closing, in seconds.
ERROR_FLUSH_S: Final = 1.0
#: Errors a broken or closed stream raises.
STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_DELIVERY_ERRORS: Final = (
    ActorNotFound,
    LocalProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def nonblocking_writer(stream: trio.abc.Stream) -> Callable[[bytes], int] | None:
    """A synchronous, non-blocking write into `stream`, for the streams that have one.

    A TCP stream writes to its socket (trio keeps it non-blocking; Python ignores
    SIGPIPE); a `StapledStream` whose send half has `send_all_nowait(data) -> int` uses
    that. Returns None for others (TLS): they always go through the writer task. The
    function returns the bytes accepted, or raises `BlockingIOError`/`trio.WouldBlock`.
    """
    if isinstance(stream, trio.SocketStream) and os.name == "posix":
        return partial(os.write, stream.socket.fileno())
    if isinstance(stream, trio.StapledStream):
        write = getattr(stream.send_stream, "send_all_nowait", None)
        if callable(write):
            return cast(Callable[[bytes], int], write)
    return None


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of a plain TCP stream (not TLS) on POSIX, else None."""
    if isinstance(stream, trio.SocketStream) and os.name == "posix":
        return stream.socket.fileno()
    return None


class StreamLink:
    """A `Link` (see gotask.runtime.node) to one peer over an authenticated stream.

    Built by `dial_link`/`accept_link`; `run()` attaches it to the node, runs its reader,
    writer and watchdog (heartbeats, deadlines), and detaches it when it closes.

    Attributes:
        peer_address: where the peer is, for logs ("127.0.0.1:5000", "memory:b").
    """

    def __init__(
        self,
        node: Node,
        stream: trio.abc.Stream,
        conn: Connection,
        *,
        peer: str,
        peer_address: str,
        options: LinkOptions,
    ) -> None:
        self.peer_address = peer_address
        self._node, self._stream, self._peer, self._options = node, stream, peer, options
        # trio's clock, bound once: `trio.current_time()` costs three calls per look.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self._proto = proto = LinkProtocol(conn, options, now=self._now(), peer=peer_address)
        self._out = proto.out  # the protocol's buffer, read on the hot paths
        self._encode = conn.send
        self._outbound_max = options.outbound_max
        self._outbound_bytes_max = options.outbound_bytes_max
        self._wake = trio.lowlevel.ParkingLot()  # the writer, while there is nothing to write
        self._write_nowait = nonblocking_writer(stream)
        self._inline_ok = False  # the writer is parked and nothing is queued or in flight
        self._last_inline_s = -math.inf
        self._room = trio.lowlevel.ParkingLot()  # senders, while the buffer is full
        self._drained = trio.lowlevel.ParkingLot()  # who waits for everything to be written
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._socket_empty = True  # see `_receive_from_socket`

    def __repr__(self) -> str:
        state = "open" if self.close_reason is None else "closed"
        return f"<StreamLink {self._node.name!r}->{self._peer!r} {self.peer_address} {state}>"

    @property
    def peer(self) -> str:
        """The peer's node name, learnt in the handshake."""
        return self._peer

    @property
    def close_reason(self) -> str | None:
        """Why the link closed, or None while it is open."""
        return self._proto.close_reason

    # -- sending -----------------------------------------------------------------------

    def send_nowait(self, item: Envelope | Reply) -> None:
        """Encode `item` and queue its frame.

        Raises:
            LocalProtocolError: `item` cannot be encoded or exceeds `frame_bytes_max`.
            trio.WouldBlock: the outbound buffer is full.
            trio.BrokenResourceError: the link is closed.
        """
        proto = self._proto
        if proto.close_reason is not None:
            raise trio.BrokenResourceError(f"link to {self._peer!r} closed: {proto.close_reason}")
        out = self._out
        if len(out) >= self._outbound_max:
            raise trio.WouldBlock
        data = self._encode(item)
        if out:
            if proto.out_bytes + len(data) > self._outbound_bytes_max:
                raise trio.WouldBlock
        elif self._inline_ok:
            now_s = self._now()
            if now_s - self._last_inline_s >= INLINE_WRITE_GAP_S:
                self._write_inline(data, now_s)
                return
        # `_push`, inline: this is the streaming hot path.
        out.append(data)
        proto.out_bytes += len(data)
        self._inline_ok = False
        if len(out) == 1:
            self._wake.unpark()  # the writer, if it is parked (nothing else parks there)

    async def send(self, item: Envelope | Reply) -> None:
        """Encode `item` and queue its frame, waiting while the outbound buffer is full.

        Raises:
            LocalProtocolError: `item` cannot be encoded or exceeds `frame_bytes_max`.
            trio.BrokenResourceError: the link is (or becomes) closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        proto = self._proto
        data = self._encode(item)
        parked = False
        while proto.close_reason is None and not proto.has_room(len(data)):
            parked = True
            await self._room.park()
        if proto.close_reason is not None:
            raise trio.BrokenResourceError(f"link to {self._peer!r} closed: {proto.close_reason}")
        self._push(data)
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _push(self, data: bytes) -> None:
        self._proto.push(data)
        self._queued()

    def _queued(self) -> None:
        """Frames were queued: the writer takes over from inline writes."""
        self._inline_ok = False
        if self._wake:
            self._wake.unpark()

    def _write_inline(self, data: bytes, now_s: float) -> None:
        """Write now, sparing the writer's task switch: a call's latency drops by a third.

        As asyncio's transports do, a frame sent while nothing is queued goes straight to
        the stream, and what does not fit is queued. At most one frame per
        `INLINE_WRITE_GAP_S` goes this way, so a burst still leaves in one `send_all`.
        """
        assert self._write_nowait is not None
        self._last_inline_s = self._proto.last_sent_s = now_s
        try:
            sent = self._write_nowait(data)
        except (trio.WouldBlock, *STREAM_ERRORS):
            sent = 0  # queued instead: the writer's send_all meets any error and closes
        if sent < len(data):
            self._push(data[sent:])

    def _send_control(self, msg: object) -> None:
        """Queue a control frame; dropped when the buffer is full (the peer is busy)."""
        if self._proto.send_control(msg):
            self._queued()
        else:
            log.debug("link %r: %s dropped, outbound buffer full", self._peer, type(msg).__name__)

    # -- lifetime ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Attach to the node, run until the link closes, then detach and close the stream.

        Never raises but `Cancelled`: every failure closes the link and is logged.
        """
        self._node.attach_link(self)
        log.info("link %r->%r (%s) up", self._node.name, self._peer, self.peer_address)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._write_loop)
                    nursery.start_soon(self._guard, self._watch_loop)
                    task_status.started()
        finally:
            self.close(self.close_reason or "cancelled")
            await trio.aclose_forcefully(self._stream)
            self._closed.set()
            log.info("link %r->%r (%s) closed: %s", self._node.name, self._peer,
                     self.peer_address, self.close_reason)

    def close(self, reason: str = "closed locally") -> None:
        """Close the link now: detach it (failing calls waiting on the peer), stop its tasks."""
        if self._proto.closed:
            return
        self._proto.close(reason)
        self._inline_ok = False  # never touch the stream outside its tasks once closing
        self._node.detach_link(self)
        self._scope.cancel()
        self._room.unpark_all()
        self._drained.unpark_all()

    async def aclose(self) -> None:
        """Close the link and wait until its stream is closed."""
        self.close()
        await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until the link has closed, for any reason."""
        await self._closed.wait()

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except Exception as exc:
            reason, bug = failure_reason(exc, STREAM_ERRORS)
            if bug:  # a bug here must not take the node down: log it loudly
                log.exception("link %r (%s) failed", self._peer, self.peer_address)
            elif isinstance(exc, LinkClosed) and exc.flush:
                log.warning("link %r (%s): %s", self._peer, self.peer_address, exc)
                await self._flush()
        else:
            reason = "stopped"
        self.close(reason)

    # -- writing -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        out, take = self._out, self._proto.take_outbound
        while True:
            while not out:
                if self._drained:
                    self._drained.unpark_all()
                self._inline_ok = self._write_nowait is not None
                await self._wake.park()
                self._inline_ok = False
            data = take()
            if self._room:
                self._room.unpark_all()
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write in slices; the watchdog closes the link when one stalls."""
        proto, send_all = self._proto, self._stream.send_all
        if len(data) <= WRITE_SLICE_BYTES:
            proto.write_started(self._now())
            await send_all(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), WRITE_SLICE_BYTES):
                proto.write_started(self._now())
                await send_all(view[start : start + WRITE_SLICE_BYTES])
        proto.write_finished(self._now())

    async def _flush(self) -> None:
        """Wait (briefly) until the fatal error frame the protocol queued is written."""
        self._queued()
        with trio.move_on_after(min(ERROR_FLUSH_S, self._options.write_timeout_s)):
            while self._out and not self._proto.closed:
                await self._drained.park()

    async def _watch_loop(self) -> None:
        """Ticks the protocol when a deadline is due, so hot paths never open a cancel scope."""
        proto = self._proto
        while True:
            now_s = trio.current_time()
            proto.tick(now_s)  # a node link starts no calls of its own: nothing times out
            if self._out:
                self._queued()  # wakes the writer, were a heartbeat all that is queued
            await trio.sleep_until(proto.next_due(now_s))

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        proto, receive_some = self._proto, self._stream.receive_some
        receive_bytes_max, now = self._options.receive_bytes_max, self._now
        fd = _socket_fd(self._stream)
        if fd is not None:
            receive_some = partial(self._receive_from_socket, fd)
        while True:
            await self._drain()
            proto.wait_reading(now())
            data = await receive_some(receive_bytes_max)
            # bytearray from some streams: the codec takes either, and a cast copies nothing
            proto.receive_data(cast(bytes, data))

    async def _receive_from_socket(self, fd: int, max_bytes: int) -> bytes:
        """`receive_some` for a TCP socket, minus trio's wrappers and a failing read.

        When the last read took less than it asked for, the socket was empty then, so
        this waits for readability first instead of trying a read bound to fail (a
        syscall per message on a request/response link). A read that filled the buffer
        is followed by a checkpoint, so a peer that floods cannot starve other tasks.
        Errors are the socket's `OSError`s (the link closes on them).
        """
        if self._socket_empty:
            await trio.lowlevel.wait_readable(fd)
        while True:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            if len(data) < max_bytes:
                self._socket_empty = True
            else:
                self._socket_empty = False
                await trio.lowlevel.checkpoint()
            return data

    async def _drain(self) -> None:
        """Hand every complete message on; raises `LinkClosed` when the link must close."""
        next_events, deliver = self._proto.next_events, self._deliver
        deliver_nowait = self._node.deliver_nowait
        while events := next_events():
            for event in events:
                kind = type(event)
                if kind is Envelope or kind is Reply:
                    # No await per message while the way on has room.
                    try:
                        deliver_nowait(event)  # type: ignore[arg-type]
                    except trio.WouldBlock:
                        await deliver(event)  # type: ignore[arg-type]
                    except _DELIVERY_ERRORS as exc:
                        log.warning("link %r: dropped %s: %s", self._peer, kind.__name__, exc)
                else:
                    await self._on_other(event)
        if self._out:
            self._queued()  # wakes the writer, were a control frame all that is queued

    async def _deliver(self, item: Envelope | Reply) -> None:
        try:
            await self._node.deliver(item)
        except _DELIVERY_ERRORS as exc:
            log.warning("link %r: dropped %s: %s", self._peer, type(item).__name__, exc)

    async def _on_other(self, event: object) -> None:
        if isinstance(event, InvalidReceived):
            log.warning("link %r (%s): invalid message: %s", self._peer, self.peer_address,
                        event.error)
            if event.reply is not None:
                await self._deliver(event.reply)
        elif isinstance(event, WireError):
            log.warning("link %r (%s): the peer reports %s: %r", self._peer, self.peer_address,
                        event.code, event.message)
