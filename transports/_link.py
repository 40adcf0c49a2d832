"""One link over any byte stream: the trio shell around the sans-IO codec.

Rules of this module:
- A link is one authenticated connection to one peer node over any `trio.abc.Stream`
  (TCP, TLS, in-memory pipes, a simulated network). Every transport goes through here, so
  all speak the same handshake, frames, limits and timeouts.
- Messages are encoded in `send_nowait`/`send`: the caller gets `LocalProtocolError` at
  once. The outbound buffer holds encoded frames, bounded by count and bytes; one writer
  task sends everything ready in one `send_all`. A frame sent while the link is idle is
  written at once by its sender when the stream can write without blocking (as asyncio's
  transports do), sparing a task switch per request. A write that makes no progress for
  `write_timeout_s` closes the link, so a peer that stops reading costs only its own link.
- The reader hands `Envelope`/`Reply` to the node through `node.deliver_nowait`, with no
  await per message, and only when that raises `trio.WouldBlock` (a full inbox or link)
  through `node.deliver`, which waits: backpressure flows back into the stream's flow
  control, by design.
- On a plain TCP socket the reader reads the socket directly (`os.read` after
  `wait_readable`), skipping a read bound to fail when the last one emptied it; see
  `_receive_from_socket`. TLS and other streams go through `receive_some`.
- From the peer, an `InvalidMessage` gets a non-fatal `WireError` (and an `ErrorReply` to
  the caller when known) and the link stays up; broken framing gets a fatal `WireError`,
  then close. Before authentication every error is fatal.
- Every wait has a deadline: the handshake, silence (`idle_timeout_s`), a frame left
  incomplete (`frame_timeout_s`), a stalled write (`write_timeout_s`). After the
  handshake one watchdog task per link enforces them and sends the heartbeats, so the
  per-message paths never open a cancel scope.
- Nonces come from `secrets`, never from the World. Secrets are never logged.
- A link's tasks never raise into the nursery running them (only `Cancelled` passes): a
  failure closes the link and is logged with the peer's address.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, cast

import attrs
import trio

from gotask._errors import (
    ActorNotFound,
    AuthenticationError,
    FramingError,
    InvalidMessage,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from gotask.runtime.message import Envelope, ErrorReply, Reply
from gotask.runtime.node import Node

from ._handshake import (
    NONCE_BYTES,
    DialerHandshake,
    ListenerHandshake,
    Ping,
    Pong,
    WireError,
    wire_error,
)
from ._wire import CLOSED, NEED_DATA, Connection

__all__ = ["HandshakeGate", "LinkOptions", "StreamLink", "accept_link", "dial_link"]

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


def _positive(instance: Any, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _idle_default(options: Any) -> float:
    return 3.0 * float(options.heartbeat_s)


@attrs.frozen(kw_only=True)
class LinkOptions:
    """Timeouts (seconds) and limits (frames, bytes) of every link.

    Attributes:
        heartbeat_s: send a `Ping` after this long without sending anything.
        idle_timeout_s: close when nothing arrived for this long; default 3 x heartbeat_s.
        handshake_timeout_s: the whole handshake, TLS included, must finish within this.
        frame_timeout_s: once authenticated, a frame that started arriving must complete
            within this (a slow-drip sender is cut off).
        write_timeout_s: close when a write of at most 64 KiB makes no progress for this
            long (the peer stopped reading).
        connect_timeout_s: a TCP connect must succeed within this.
        outbound_max: encoded frames waiting to be written, at most.
        outbound_bytes_max: bytes waiting to be written, at most (a single larger frame
            is accepted into an empty buffer).
        frame_bytes_max: largest frame body once authenticated, both directions.
        preauth_frame_bytes_max: largest frame body before authentication.
        auth_failure_delay_s: a listener answers a failed proof only after this delay.
        unauthenticated_max: connections one listener lets handshake at once; more are
            closed at once.
        receive_bytes_max: bytes asked of the stream per read.
    """

    heartbeat_s: float = attrs.field(default=5.0, validator=_positive)
    idle_timeout_s: float = attrs.field(
        default=attrs.Factory(_idle_default, takes_self=True), validator=_positive
    )
    handshake_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    frame_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    write_timeout_s: float = attrs.field(default=15.0, validator=_positive)
    connect_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    outbound_max: int = attrs.field(default=4096, validator=_positive)
    outbound_bytes_max: int = attrs.field(default=8 << 20, validator=_positive)
    frame_bytes_max: int = attrs.field(default=1 << 20, validator=_positive)
    preauth_frame_bytes_max: int = attrs.field(default=16 << 10, validator=_positive)
    auth_failure_delay_s: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    unauthenticated_max: int = attrs.field(default=64, validator=_positive)
    receive_bytes_max: int = attrs.field(default=256 << 10, validator=_positive)

    def connection(self) -> Connection:
        """A fresh codec connection with these frame limits."""
        return Connection(
            frame_bytes_max=self.frame_bytes_max,
            preauth_frame_bytes_max=self.preauth_frame_bytes_max,
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


class _Closed(Exception):
    """Internal: the link must close; the message is the reason."""


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
        self._node, self._stream, self._conn = node, stream, conn
        self._peer, self._options = peer, options
        self._outbound_max = options.outbound_max
        self._outbound_bytes_max = options.outbound_bytes_max
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = trio.lowlevel.ParkingLot()  # the writer, while there is nothing to write
        self._write_nowait = nonblocking_writer(stream)
        self._inline_ok = False  # the writer is parked and nothing is queued or in flight
        self._last_inline_s = -math.inf
        self._room = trio.lowlevel.ParkingLot()  # senders, while the buffer is full
        self._drained = trio.lowlevel.ParkingLot()  # who waits for everything to be written
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._close_reason: str | None = None
        # trio's clock, bound once: `trio.current_time()` costs three calls per look.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self._last_sent_s = self._now()
        self._read_deadline_s = self._write_deadline_s = math.inf
        self._read_partial = False
        self._socket_empty = True  # see `_receive_from_socket`
        self._ping_seq = 0

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else "closed"
        return f"<StreamLink {self._node.name!r}->{self._peer!r} {self.peer_address} {state}>"

    @property
    def peer(self) -> str:
        """The peer's node name, learnt in the handshake."""
        return self._peer

    @property
    def close_reason(self) -> str | None:
        """Why the link closed, or None while it is open."""
        return self._close_reason

    # -- sending -----------------------------------------------------------------------

    def send_nowait(self, item: Envelope | Reply) -> None:
        """Encode `item` and queue its frame.

        Raises:
            LocalProtocolError: `item` cannot be encoded or exceeds `frame_bytes_max`.
            trio.WouldBlock: the outbound buffer is full.
            trio.BrokenResourceError: the link is closed.
        """
        if self._close_reason is not None:
            raise trio.BrokenResourceError(f"link to {self._peer!r} closed: {self._close_reason}")
        out = self._out
        if len(out) >= self._outbound_max:
            raise trio.WouldBlock
        data = self._conn.send(item)
        if out:
            if self._out_bytes + len(data) > self._outbound_bytes_max:
                raise trio.WouldBlock
        elif self._inline_ok:
            now_s = self._now()
            if now_s - self._last_inline_s >= INLINE_WRITE_GAP_S:
                self._write_inline(data, now_s)
                return
        # `_push`, inline: this is the streaming hot path.
        out.append(data)
        self._out_bytes += len(data)
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
        data = self._conn.send(item)
        parked = False
        while self._close_reason is None and not self._has_room(len(data)):
            parked = True
            await self._room.park()
        if self._close_reason is not None:
            raise trio.BrokenResourceError(f"link to {self._peer!r} closed: {self._close_reason}")
        self._push(data)
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _has_room(self, size: int) -> bool:
        out = self._out
        return not out or (
            len(out) < self._outbound_max and self._out_bytes + size <= self._outbound_bytes_max
        )

    def _push(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
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
        self._last_inline_s = self._last_sent_s = now_s
        try:
            sent = self._write_nowait(data)
        except (trio.WouldBlock, *STREAM_ERRORS):
            sent = 0  # queued instead: the writer's send_all meets any error and closes
        if sent < len(data):
            self._push(data[sent:])

    def _send_control(self, msg: object) -> None:
        """Queue a control frame; dropped when the buffer is full (the peer is busy)."""
        data = self._conn.send(msg)
        if self._close_reason is None and self._has_room(len(data)):
            self._push(data)
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
            self.close(self._close_reason or "cancelled")
            await trio.aclose_forcefully(self._stream)
            self._closed.set()
            log.info("link %r->%r (%s) closed: %s", self._node.name, self._peer,
                     self.peer_address, self._close_reason)

    def close(self, reason: str = "closed locally") -> None:
        """Close the link now: detach it (failing calls waiting on the peer), stop its tasks."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
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
            reason = "stopped"
        except _Closed as exc:
            reason = str(exc)
        except STREAM_ERRORS as exc:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug here must not take the node down: log it loudly
            log.exception("link %r (%s) failed", self._peer, self.peer_address)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        self.close(reason)

    # -- writing -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        out = self._out
        while True:
            while not out:
                if self._drained:
                    self._drained.unpark_all()
                self._inline_ok = self._write_nowait is not None
                await self._wake.park()
                self._inline_ok = False
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_bytes = 0
            if self._room:
                self._room.unpark_all()
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write in slices; the watchdog closes the link when one stalls."""
        timeout_s, send_all = self._options.write_timeout_s, self._stream.send_all
        if len(data) <= WRITE_SLICE_BYTES:
            self._write_deadline_s = self._now() + timeout_s
            await send_all(data)
        else:
            view = memoryview(data)
            for start in range(0, len(data), WRITE_SLICE_BYTES):
                self._write_deadline_s = self._now() + timeout_s
                await send_all(view[start : start + WRITE_SLICE_BYTES])
        self._write_deadline_s = math.inf
        self._last_sent_s = self._now()

    async def _send_fatal(self, error: WireError) -> None:
        """Queue `error` ahead of the limits and wait (briefly) until it is written."""
        self._out.append(self._conn.send(error))
        self._inline_ok = False
        if self._wake:
            self._wake.unpark()
        with trio.move_on_after(min(ERROR_FLUSH_S, self._options.write_timeout_s)):
            while self._out and self._close_reason is None:
                await self._drained.park()

    async def _watch_loop(self) -> None:
        """Heartbeats and every deadline, so the hot paths never open a cancel scope."""
        opts = self._options
        horizon_s = min(opts.idle_timeout_s, opts.frame_timeout_s, opts.write_timeout_s)
        next_ping_s = -math.inf
        while True:
            now_s = trio.current_time()
            self._check_deadlines(now_s)
            ping_s = max(self._last_sent_s + opts.heartbeat_s, next_ping_s)
            if now_s >= ping_s:
                self._ping_seq += 1
                self._send_control(Ping(self._ping_seq))
                ping_s = next_ping_s = now_s + opts.heartbeat_s
            # Deadlines set while we sleep lie at least `horizon_s` ahead of now.
            await trio.sleep_until(
                min(ping_s, self._read_deadline_s, self._write_deadline_s, now_s + horizon_s)
            )

    def _check_deadlines(self, now_s: float) -> None:
        opts = self._options
        if now_s >= self._write_deadline_s:
            raise _Closed(f"write stalled for {opts.write_timeout_s:g}s: the peer is not reading")
        if now_s >= self._read_deadline_s:
            if self._read_partial:
                raise _Closed(f"a frame still incomplete after {opts.frame_timeout_s:g}s")
            raise _Closed(f"nothing received for {opts.idle_timeout_s:g}s")

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        conn, receive_some = self._conn, self._stream.receive_some
        idle_s, frame_s = self._options.idle_timeout_s, self._options.frame_timeout_s
        receive_bytes_max = self._options.receive_bytes_max
        fd = _socket_fd(self._stream)
        if fd is not None:
            receive_some = partial(self._receive_from_socket, fd)
        partial_since_s: float | None = None
        while True:
            try:
                handled = await self._drain()
            except FramingError as exc:
                log.warning("link %r (%s): %s", self._peer, self.peer_address, exc)
                await self._send_fatal(wire_error(exc))
                raise _Closed(f"framing error: {exc}") from None
            if handled < 0:
                raise _Closed("the peer closed the connection")
            now_s = self._now()
            if not conn.buffered_bytes:
                partial_since_s = None
            elif handled or partial_since_s is None:
                partial_since_s = now_s
            # The deadlines run only while waiting here, never while `node.deliver` waits.
            self._read_partial = partial_since_s is not None
            self._read_deadline_s = (
                now_s + idle_s if partial_since_s is None else partial_since_s + frame_s
            )
            data = await receive_some(receive_bytes_max)
            self._read_deadline_s = math.inf
            # bytearray from some streams: the codec takes either, and a cast copies nothing
            conn.receive_data(cast(bytes, data))

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

    async def _drain(self) -> int:
        """Handle every complete frame; return how many, or -1 after a clean EOF."""
        conn, deliver = self._conn, self._deliver
        deliver_nowait = self._node.deliver_nowait
        handled = 0
        while True:
            events = conn.next_events()
            if not events:
                try:
                    event = conn.next_event()
                except InvalidMessage as exc:
                    event = exc
                if event is NEED_DATA:
                    return handled
                if event is CLOSED:
                    return -1
                events = [event]
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
                elif isinstance(event, InvalidMessage):
                    await self._on_invalid(event)
                else:
                    self._on_control(event)
            handled += len(events)

    async def _deliver(self, item: Envelope | Reply) -> None:
        try:
            await self._node.deliver(item)
        except _DELIVERY_ERRORS as exc:
            log.warning("link %r: dropped %s: %s", self._peer, type(item).__name__, exc)

    async def _on_invalid(self, exc: InvalidMessage) -> None:
        log.warning("link %r (%s): invalid message: %s", self._peer, self.peer_address, exc)
        self._send_control(wire_error(exc))
        if exc.corr and exc.reply_node is not None:
            error = ErrorReply("InvalidMessage", f"the receiving node refused it: {exc}", "")
            await self._deliver(Reply(exc.reply_node, exc.corr, error))

    def _on_control(self, msg: object) -> None:
        if isinstance(msg, Ping):
            self._send_control(Pong(msg.seq))
        elif isinstance(msg, WireError):
            log.warning("link %r (%s): the peer reports %s: %r", self._peer, self.peer_address,
                        msg.code, msg.message)
            if msg.fatal:
                raise _Closed(f"the peer reported a fatal error: {msg.code}: {msg.message}")
        elif not isinstance(msg, Pong):
            text = f"unexpected {type(msg).__name__} after the handshake"
            self._send_control(WireError("invalid", text, fatal=False))


# -- handshake -------------------------------------------------------------------------


@attrs.define
class HandshakeGate:
    """Counts one listener's connections still in the handshake, refusing past `limit`."""

    limit: int
    active: int = 0

    def try_enter(self) -> bool:
        """Take a slot; False when all `limit` slots are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.active -= 1


async def dial_link(
    node: Node,
    stream: trio.abc.Stream,
    *,
    secret: bytes | None,
    options: LinkOptions,
    peer_address: str,
) -> StreamLink:
    """Handshake as the dialer over `stream`, then start the link in `node.nursery`.

    Returns the link, attached to the node. The stream is closed on failure.

    Raises:
        AuthenticationError: the secrets differ, or one side has none.
        RemoteProtocolError: the peer broke the protocol or closed during the handshake.
        TimeoutError: no handshake within `options.handshake_timeout_s`.
        ConnectionError: the stream broke.
    """
    conn = options.connection()
    shake = DialerHandshake(secret, node.name, secrets.token_bytes(NONCE_BYTES))
    try:
        await _handshake(stream, conn, shake, options, listener=False)
        peer = _peer_name(node, shake)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectionError(f"connection to {peer_address} broke: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    link = StreamLink(node, stream, conn, peer=peer, peer_address=peer_address, options=options)
    await node.nursery.start(link.run)
    return link


async def accept_link(
    node: Node,
    stream: trio.abc.Stream,
    *,
    secret: bytes | None,
    options: LinkOptions,
    gate: HandshakeGate,
    peer_address: str,
) -> None:
    """Handshake as the listener over `stream`, then run the link until it closes.

    Never raises but `Cancelled`: a failed handshake is logged with `peer_address` and
    the stream closed.
    """
    if not gate.try_enter():
        log.warning("refused %s: %d connections already handshaking", peer_address, gate.limit)
        await trio.aclose_forcefully(stream)
        return
    try:
        conn, peer = await _accept_handshake(node, stream, secret, options, peer_address)
    finally:
        gate.leave()
    if peer is None:
        await trio.aclose_forcefully(stream)
        return
    link = StreamLink(node, stream, conn, peer=peer, peer_address=peer_address, options=options)
    await link.run()


async def _accept_handshake(
    node: Node,
    stream: trio.abc.Stream,
    secret: bytes | None,
    options: LinkOptions,
    peer_address: str,
) -> tuple[Connection, str | None]:
    conn = options.connection()
    shake = ListenerHandshake(secret, node.name, secrets.token_bytes(NONCE_BYTES))
    try:
        await _handshake(stream, conn, shake, options, listener=True)
        return conn, _peer_name(node, shake)
    except (ProtocolError, *STREAM_ERRORS) as exc:
        log.warning("handshake from %s failed: %s", peer_address, exc)
    except Exception:  # a bug must not stop the listener: log it loudly
        log.exception("handshake from %s failed", peer_address)
    return conn, None


def _peer_name(node: Node, shake: DialerHandshake | ListenerHandshake) -> str:
    peer = shake.peer_node
    assert peer is not None
    if peer == node.name:
        raise RemoteProtocolError(f"the peer claims this node's own name {peer!r}")
    return peer


async def _handshake(
    stream: trio.abc.Stream,
    conn: Connection,
    shake: DialerHandshake | ListenerHandshake,
    options: LinkOptions,
    *,
    listener: bool,
) -> None:
    """Run the handshake; on a protocol failure tell the peer (best effort), then raise."""
    try:
        with trio.fail_after(options.handshake_timeout_s):
            await _exchange(stream, conn, shake, options.receive_bytes_max)
    except (ProtocolError, trio.TooSlowError) as exc:
        error = _handshake_error(exc, shake)
        if listener and error is not None and error.code == "auth":
            await trio.sleep(options.auth_failure_delay_s)  # slows down guessing the secret
        await _send_best_effort(stream, conn, error)
        if isinstance(exc, trio.TooSlowError):
            limit_s = options.handshake_timeout_s
            raise TimeoutError(f"handshake not finished within {limit_s:g}s") from None
        raise


async def _exchange(
    stream: trio.abc.Stream,
    conn: Connection,
    shake: DialerHandshake | ListenerHandshake,
    receive_bytes_max: int,
) -> None:
    first = shake.start()
    if first:
        await stream.send_all(conn.send_many(first))
    while not shake.done:
        replies = shake.receive(await _next_message(stream, conn, receive_bytes_max))
        data = conn.send_many(replies)
        if shake.done:
            conn.mark_authenticated()
        if data:
            await stream.send_all(data)


async def _next_message(
    stream: trio.abc.Stream, conn: Connection, receive_bytes_max: int
) -> object:
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(cast(bytes, await stream.receive_some(receive_bytes_max)))
        elif event is CLOSED:
            raise RemoteProtocolError("the peer closed the connection during the handshake")
        else:
            return event


def _handshake_error(
    exc: ProtocolError | trio.TooSlowError, shake: DialerHandshake | ListenerHandshake
) -> WireError | None:
    """The frame telling the peer why the handshake failed, if it should be told."""
    if isinstance(exc, trio.TooSlowError):
        return WireError("handshake", "handshake timed out", fatal=True)
    if isinstance(exc, AuthenticationError):
        return shake.error_reply
    if isinstance(exc, InvalidMessage):
        return WireError("invalid", f"before authentication: {exc}", fatal=True)
    if isinstance(exc, FramingError):
        return wire_error(exc)
    return None


async def _send_best_effort(
    stream: trio.abc.Stream, conn: Connection, error: WireError | None
) -> None:
    if error is None:
        return
    with trio.move_on_after(ERROR_FLUSH_S):
        try:
            await stream.send_all(conn.send(error))
        except STREAM_ERRORS:
            pass  # the peer is gone already; closing is all that is left to do
