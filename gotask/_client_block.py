"""The blocking client's connection: a plain-socket shell around the sans-IO link protocol.

Rules of this module:
- No thread, no event loop: the thread that makes a call drives its link (write the
  request, read until the reply, tick the protocol when `next_due` comes), as h11 serves
  sync code. Every decision (deadlines, control frames, correlation) is the protocol's.
- Between calls nobody reads: before each call `alive()` answers the pings that came,
  notices a node that closed, and gives up a link silent long enough for the node to
  drop it (`STALE_AFTER_BEATS` heartbeats); the caller dials again, and the request
  never left.
- Anything raised in the middle of a call (KeyboardInterrupt, a timeout of the socket,
  an error of the stream) closes the link: a half-written frame must never be followed.
- A link belongs to the process that dialed it (`pid`); a forked child never writes to it.
- The secret never appears in a log, an exception or a repr.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Final

from gotask._client_conn import CALLER_NAME, LinkSettings, NotSent, handle_event
from gotask._errors import ConnectionLost, NotAGoTaskNode, ProtocolError
from gotask._job import JobRecord
from gotask._messages import BROKER
from gotask.runtime.message import Address, Envelope
from gotask.transports._handshake import NONCE_BYTES, DialerHandshake
from gotask.transports._link_protocol import (
    CallDone,
    HandshakeProtocol,
    LinkClosed,
    LinkProtocol,
)
from gotask.transports._wire import Connection

__all__ = ["BlockingLink", "dial_blocking"]

log = logging.getLogger("gotask.client")

#: A link that sent nothing for this many heartbeats is dialed again before use: the
#: node closes a link silent for three (its default idle timeout).
STALE_AFTER_BEATS: Final = 2.0
#: Longest wait to deliver a fatal error frame before closing, in seconds.
ERROR_FLUSH_S: Final = 1.0
_SHORTEST_WAIT_S: Final = 1e-4


class BlockingLink:
    """One authenticated connection from a blocking client to one node. See `dial_blocking`.

    Args:
        on_push: called with each `JobRecord` pushed to this client's watch address.
    """

    def __init__(
        self,
        sock: socket.socket,
        conn: Connection,
        *,
        client_node: str,
        peer: str,
        address: str,
        settings: LinkSettings,
        corr: itertools.count[int],
        on_push: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.peer, self.address, self.node, self.pid = peer, address, client_node, os.getpid()
        self._sock, self._settings, self._corr, self._on_push = sock, settings, corr, on_push
        self._me = Address(client_node, CALLER_NAME)
        self._broker = Address(peer, BROKER)
        self._proto = LinkProtocol(conn, settings.link_options(), now=time.monotonic(),
                                   peer=address, calls=True)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<BlockingLink {self._me.node!r}->{self.peer!r} {self.address} {state}>"

    @property
    def closed(self) -> bool:
        """Whether the link has closed."""
        return self._proto.closed

    def alive(self) -> bool:
        """Handle what came while nobody read; False when the link is (now) closed."""
        proto = self._proto
        if proto.closed or self.pid != os.getpid():
            return False
        if time.monotonic() - proto.last_sent_s >= STALE_AFTER_BEATS * self._settings.heartbeat_s:
            self.close("idle long enough for the node to drop it")
            return False
        try:
            self._sock.settimeout(0.0)  # a TLS record only partly here must not block
            while _readable(self._sock):
                self._receive(None, want_push=False)
            self._flush()
        except (OSError, LinkClosed) as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
            raise
        return not proto.closed

    def call(self, msg: object, timeout_s: float) -> object:
        """Send `msg` to the node's broker; return the reply (maybe an `ErrorReply`).

        Raises:
            LocalProtocolError: `msg` cannot be encoded (nothing was sent).
            NotSent: the link was closed before the request was written.
            ConnectionLost: the link closed while the request was in flight.
            CallTimeout: no reply within `timeout_s` seconds.
        """
        proto, corr = self._proto, next(self._corr)
        frame = proto.encode(Envelope(self._broker, self._me, corr, msg))
        if proto.closed:
            raise NotSent(f"connection to {self.address} closed: {proto.close_reason}")
        proto.push(frame)
        proto.start_call(corr, time.monotonic(), timeout_s, type(msg).__name__)
        done = self._run(corr, None)
        assert done is not None
        if done.error is not None:
            raise done.error
        return done.reply

    def wait_push(self, timeout_s: float) -> bool:
        """Read until a push arrives (True) or `timeout_s` passes (False).

        Raises:
            ConnectionLost: the link closed.
        """
        if self._proto.closed:
            raise ConnectionLost(f"connection to {self.address} closed: "
                                 f"{self._proto.close_reason}")
        return self._run(None, time.monotonic() + timeout_s) is not None

    def close(self, reason: str = "closed by the client") -> None:
        """Close now; a forked child only forgets the socket (the parent still uses it)."""
        if self._proto.closed:
            return
        self._proto.close(reason)
        if self.pid == os.getpid():
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            except OSError:
                pass  # not connected any more
            self._sock.close()
        log.info("client link to %s (%s) closed: %s", self.peer, self.address, reason)

    # -- the loop ------------------------------------------------------------------------

    def _run(self, corr: int | None, until_s: float | None) -> CallDone | None:
        """Write, read and tick until call `corr` is done, or (corr None) a push came or
        `until_s` passed; closes the link on any error or interruption."""
        try:
            return self._loop(corr, until_s)
        except (OSError, LinkClosed) as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
            raise
        text = f"connection to {self.address} lost with a request in flight: "
        raise ConnectionLost(text + str(self._proto.close_reason))

    def _loop(self, corr: int | None, until_s: float | None) -> CallDone | None:
        proto = self._proto
        found = self._drain(corr, want_push=corr is None)  # what came with the handshake
        while found is None:
            self._flush()
            now_s = time.monotonic()
            for done in proto.tick(now_s):
                if done.corr == corr:
                    return done
            if until_s is not None and now_s >= until_s:
                return None
            proto.wait_reading(now_s)
            due_s = proto.next_due(now_s) if until_s is None else min(
                until_s, proto.next_due(now_s))
            self._sock.settimeout(max(_SHORTEST_WAIT_S, due_s - now_s))
            found = self._receive(corr, want_push=corr is None)
        return found

    def _receive(self, corr: int | None, *, want_push: bool) -> CallDone | None:
        """Read once and handle every event; see `_drain`."""
        try:
            data = self._sock.recv(self._settings.receive_bytes_max)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return None
        self._proto.receive_data(data)
        return self._drain(corr, want_push=want_push)

    def _drain(self, corr: int | None, *, want_push: bool) -> CallDone | None:
        """Handle every event whole in the buffer; the `CallDone` of `corr`, or (with
        `want_push`) `_PUSHED` when a push came."""
        found: CallDone | None = None
        while events := self._proto.next_events():
            for event in events:
                if isinstance(event, CallDone):
                    found = event if event.corr == corr else found
                elif handle_event(self._proto, event, self.address, self._on_push) and want_push:
                    found = _PUSHED
        return found

    def _flush(self) -> None:
        proto = self._proto
        data = proto.take_outbound()
        if data:
            proto.write_started(time.monotonic())
            self._sock.settimeout(self._settings.write_timeout_s)
            try:
                self._sock.sendall(data)
            except TimeoutError:
                raise LinkClosed(f"write stalled for {self._settings.write_timeout_s:g}s: "
                                 "the node is not reading") from None
            proto.write_finished(time.monotonic())

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, LinkClosed):
            if exc.flush:
                try:
                    self._sock.settimeout(ERROR_FLUSH_S)
                    self._sock.sendall(self._proto.take_outbound())
                except OSError:
                    pass  # the node is gone already; the reason says what went wrong
            self.close(str(exc))
        elif isinstance(exc, OSError):
            self.close(str(exc) or type(exc).__name__)
        else:
            self.close(f"interrupted by {type(exc).__name__}")


_PUSHED: Final = CallDone(0)


def _readable(sock: socket.socket) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


# -- dialing -------------------------------------------------------------------------------


def dial_blocking(
    host: str,
    port: int,
    *,
    secret: bytes | None,
    client_node: str,
    settings: LinkSettings,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[socket.socket, Connection, str]:
    """Connect to a node and run the handshake as the dialer, blocking.

    Returns the socket, its authenticated codec connection and the node's name.

    Raises:
        As `gotask._client_conn.dial`.
    """
    timeout_s = settings.connect_timeout_s
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        conn = Connection(frame_bytes_max=settings.frame_bytes_max)
        shake = DialerHandshake(secret, client_node, secrets.token_bytes(NONCE_BYTES))
        hs = HandshakeProtocol(conn, shake, now=time.monotonic(), timeout_s=timeout_s)
        try:
            _handshake(sock, hs, settings.receive_bytes_max)
        except TimeoutError:
            if hs.peer_node is not None:
                raise hs.timeout_error() from None
            raise NotAGoTaskNode(
                f"this is not a GoTask node (it accepted the connection but did not "
                f"answer the handshake within {timeout_s:g}s); check the address and port"
            ) from None
    except BaseException:
        sock.close()
        raise
    assert hs.peer_node is not None
    return sock, conn, hs.peer_node


def _handshake(sock: socket.socket, hs: HandshakeProtocol, receive_max: int) -> None:
    try:
        sock.sendall(hs.start())
        while not hs.done:
            left_s = hs.due_at - time.monotonic()
            if left_s <= 0:
                raise TimeoutError
            sock.settimeout(left_s)
            replies = hs.receive_data(sock.recv(receive_max))
            if replies:
                sock.sendall(replies)
    except ProtocolError as exc:
        error = hs.failure_frame(exc)
        if error is not None:
            try:
                sock.settimeout(ERROR_FLUSH_S)
                sock.sendall(hs.conn.send(error))
            except OSError:
                pass  # the node is gone already; the error says what went wrong
        raise
