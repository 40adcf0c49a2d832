"""The client's connection to one node: an anyio shell around the sans-IO link protocol.

Rules of this module:
- Written on anyio, never on trio directly, so the client runs under trio and asyncio.
- A client is a peer that hosts no actors. A `ClientLink` runs the same handshake and
  link protocol as a node (`gotask.transports._link_protocol`, nonce from `secrets`):
  what the link decides (control frames, invalid messages, correlation of replies, every
  deadline, the bounded outbound buffer) is decided there; this module moves bytes and
  wakes tasks. Requests go to the broker of the node it reached, from
  `Address(client_node, "$call")`. Envelopes for `Address(client_node, "watch")` carrying
  `JobChanged` are handed to `on_push`; a call to any other actor is refused.
- Every wait has a deadline: connect and handshake (`connect_timeout_s`), silence
  (`idle_timeout_s`), a frame left incomplete (`frame_timeout_s`), a stalled write
  (`write_timeout_s`), each call (its timeout). One watchdog task ticks the protocol.
- A link's tasks never raise into the task group running them: a failure closes the
  link, fails its waiting calls with `ConnectionLost`, and is logged with the address.
- The outbound buffer is bounded (`outbound_max` frames); one writer sends everything
  ready at once. Control frames (Pong, Ping) are dropped rather than waited for.
- The secret never appears in a log, an exception or a repr.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import anyio
import anyio.abc
import attrs

from gotask._errors import ConfigError, ConnectionLost, NotAGoTaskNode, ProtocolError
from gotask._job import JobRecord
from gotask._messages import BROKER, JobChanged
from gotask.config import DEFAULT_PORT, read_secret
from gotask.runtime.message import Address, Envelope
from gotask.transports._handshake import NONCE_BYTES, DialerHandshake, WireError
from gotask.transports._link_protocol import (
    CallDone,
    HandshakeProtocol,
    InvalidReceived,
    LinkClosed,
    LinkOptions,
    LinkProtocol,
    failure_reason,
)
from gotask.transports._wire import FRAME_BYTES_MAX, Connection

__all__ = [
    "CALLER_NAME",
    "DEFAULT_NODE",
    "WATCH_NAME",
    "ClientLink",
    "LinkSettings",
    "NotSent",
    "dial",
    "handle_event",
    "nodes_from_env",
    "parse_address",
    "secret_from_env",
]

log = logging.getLogger("gotask.client")

#: The actor name a client's requests come from, and the one its pushes go to.
CALLER_NAME: Final = "$call"
WATCH_NAME: Final = "watch"
#: Longest wait to deliver a fatal error frame before closing, in seconds.
ERROR_FLUSH_S: Final = 1.0
#: Errors a broken or closed stream raises.
STREAM_ERRORS: Final = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@attrs.frozen(kw_only=True)
class LinkSettings:
    """Timeouts (seconds) and limits of a client link.

    Attributes:
        connect_timeout_s: TCP connect, TLS and handshake together must finish within this.
        heartbeat_s: send a `Ping` after this long without sending anything.
        idle_timeout_s: close when nothing arrived for this long (nodes ping every 5 s).
        frame_timeout_s: a frame that started arriving must complete within this.
        write_timeout_s: close when a write makes no progress for this long.
        outbound_max: encoded frames waiting to be written, at most.
        frame_bytes_max: largest frame body once authenticated, in bytes.
        receive_bytes_max: bytes asked of the stream per read.
    """

    connect_timeout_s: float = 5.0
    heartbeat_s: float = 5.0
    idle_timeout_s: float = 20.0
    frame_timeout_s: float = 30.0
    write_timeout_s: float = 15.0
    outbound_max: int = 1024
    frame_bytes_max: int = FRAME_BYTES_MAX
    receive_bytes_max: int = 256 << 10

    def link_options(self) -> LinkOptions:
        """The link protocol's options for these settings."""
        return LinkOptions(
            connect_timeout_s=self.connect_timeout_s,
            handshake_timeout_s=self.connect_timeout_s,
            heartbeat_s=self.heartbeat_s,
            idle_timeout_s=self.idle_timeout_s,
            frame_timeout_s=self.frame_timeout_s,
            write_timeout_s=self.write_timeout_s,
            outbound_max=self.outbound_max,
            frame_bytes_max=self.frame_bytes_max,
            receive_bytes_max=self.receive_bytes_max,
        )


class NotSent(ConnectionLost):
    """The link was closed before the request was queued: it never left (safe to retry)."""


class _Signal:
    """Wakes every task waiting when it fires (anyio has no parking lot)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    def fire(self) -> None:
        self._event.set()
        self._event = anyio.Event()


@attrs.define(eq=False)
class _Call:
    done: anyio.Event = attrs.Factory(anyio.Event)
    reply: object = None
    error: BaseException | None = None


class ClientLink:
    """One authenticated connection from a client to one node. Built by `dial`.

    Args:
        on_push: called (synchronously, from the reader) with each pushed `JobRecord`.
        on_close: called once with the link when it closes, for any reason.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        conn: Connection,
        *,
        client_node: str,
        peer: str,
        address: str,
        settings: LinkSettings,
        corr: itertools.count[int],
        on_push: Callable[[JobRecord], None],
        on_close: Callable[[ClientLink], None],
    ) -> None:
        self.peer, self.address = peer, address
        self._stream, self._settings = stream, settings
        self._me = Address(client_node, CALLER_NAME)
        self._broker = Address(peer, BROKER)
        self._corr, self._on_push, self._on_close = corr, on_push, on_close
        self._proto = LinkProtocol(conn, settings.link_options(), now=anyio.current_time(),
                                   peer=address, calls=True)
        self._calls: dict[int, _Call] = {}
        self._queued, self._written, self._rearm = _Signal(), _Signal(), _Signal()
        self._watch_due_s = math.inf
        self._scope = anyio.CancelScope()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ClientLink {self._me.node!r}->{self.peer!r} {self.address} {state}>"

    @property
    def closed(self) -> bool:
        """Whether the link has closed."""
        return self._proto.closed

    async def call(self, msg: object, timeout_s: float) -> object:
        """Send `msg` to the node's broker and return the reply (maybe an `ErrorReply`).

        Raises:
            LocalProtocolError: `msg` cannot be encoded (nothing was sent).
            NotSent: the link was closed before the request was queued.
            ConnectionLost: the link closed while the request was in flight.
            CallTimeout: no reply within `timeout_s` seconds.
        """
        proto, corr = self._proto, next(self._corr)
        frame = proto.encode(Envelope(self._broker, self._me, corr, msg))
        call = self._calls[corr] = _Call()
        try:
            await self._queue(frame)
            due_s = proto.start_call(corr, anyio.current_time(), timeout_s, type(msg).__name__)
            if due_s < self._watch_due_s:
                self._rearm.fire()
            await call.done.wait()
        finally:
            del self._calls[corr]
            proto.forget_call(corr)
        if call.error is not None:
            raise call.error
        return call.reply

    async def send(self, msg: object) -> None:
        """Send `msg` to the node's broker, no reply expected; dropped if the link closed."""
        try:
            await self._queue(self._proto.encode(Envelope(self._broker, self._me, 0, msg)))
        except NotSent:
            log.debug("client link to %s: %s not sent, link closed", self.address,
                      type(msg).__name__)

    async def _queue(self, frame: bytes) -> None:
        """Queue `frame`, waiting while the outbound buffer is full."""
        proto = self._proto
        while proto.close_reason is None and not proto.has_room(len(frame)):
            await self._written.wait()
        if proto.close_reason is not None:
            raise NotSent(f"connection to {self.address} closed: {proto.close_reason}")
        proto.push(frame)
        self._queued.fire()

    # -- lifetime ----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run reader, writer and watchdog until the link closes; then close the stream.

        Never raises but cancellation: every failure closes the link and is logged.
        """
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for loop in (self._read_loop, self._write_loop, self._watch_loop):
                        tg.start_soon(self._guard, loop)
                    task_status.started()
        finally:
            self.close(self._proto.close_reason or "cancelled")
            await anyio.aclose_forcefully(self._stream)
            log.info("client link to %s (%s) closed: %s", self.peer, self.address,
                     self._proto.close_reason)

    def close(self, reason: str = "closed by the client") -> None:
        """Close now: stop the tasks and fail every waiting call with `ConnectionLost`."""
        if self._proto.closed:
            return
        for done in self._proto.close(reason):
            self._finish(done)
        self._scope.cancel()
        self._written.fire()  # wakes senders waiting for room, to fail with NotSent
        self._on_close(self)

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
            self.close("stopped")
        except Exception as exc:
            reason, bug = failure_reason(exc, STREAM_ERRORS)
            if bug:  # it must fail the calls, not hang them: log it loudly
                log.exception("client link to %s failed", self.address)
            elif isinstance(exc, LinkClosed) and exc.flush:
                await self._flush()
            self.close(reason)

    def _finish(self, done: CallDone) -> None:
        call = self._calls.get(done.corr)
        if call is not None and not call.done.is_set():
            call.reply, call.error = done.reply, done.error
            call.done.set()

    # -- writing -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        proto, send = self._proto, self._stream.send
        while True:
            while not proto.out:
                await self._queued.wait()
            data = proto.take_outbound()
            self._written.fire()
            proto.write_started(anyio.current_time())
            await send(data)
            proto.write_finished(anyio.current_time())

    async def _flush(self) -> None:
        """Wait (briefly) until the fatal error frame the protocol queued is written."""
        self._queued.fire()
        with anyio.move_on_after(ERROR_FLUSH_S):
            while self._proto.out:
                await self._written.wait()

    async def _watch_loop(self) -> None:
        """Ticks the protocol when a deadline is due, or earlier when a call asks."""
        proto = self._proto
        while True:
            now_s = anyio.current_time()
            for done in proto.tick(now_s):
                self._finish(done)
            if proto.out:
                self._queued.fire()
            self._watch_due_s = proto.next_due(now_s)
            with anyio.CancelScope(deadline=self._watch_due_s):
                await self._rearm.wait()

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        proto, receive = self._proto, self._stream.receive
        receive_bytes_max = self._settings.receive_bytes_max
        while True:
            self._drain()
            proto.wait_reading(anyio.current_time())
            try:
                data = await receive(receive_bytes_max)
            except anyio.EndOfStream:
                data = b""
            proto.receive_data(data)

    def _drain(self) -> None:
        """Handle every complete message; raises `LinkClosed` when the link must close."""
        proto = self._proto
        while events := proto.next_events():
            for event in events:
                self._on_event(event)
        if proto.out:
            self._queued.fire()  # an answer to a control frame

    def _on_event(self, event: object) -> None:
        if isinstance(event, CallDone):
            self._finish(event)
        else:
            handle_event(self._proto, event, self.address, self._on_push)


def handle_event(proto: LinkProtocol, event: object, address: str,
                 on_push: Callable[[JobRecord], None] | None) -> bool:
    """Handle an event of a client's link other than a `CallDone`; True for a push.

    Envelopes to the client's watch address carrying `JobChanged` go to `on_push`; a
    call to any other actor is refused; invalid messages and the node's errors are logged.
    """
    if isinstance(event, Envelope):
        if event.dst.name == WATCH_NAME and isinstance(event.msg, JobChanged):
            if on_push is not None:
                on_push(event.msg.job)
            return True
        proto.refuse(event, "ActorNotFound", f"no actor {event.dst.name!r}: clients host none")
    elif isinstance(event, InvalidReceived):
        log.warning("client link to %s: invalid message: %s", address, event.error)
        if event.reply is not None:
            proto.send_control(event.reply)
    elif isinstance(event, WireError):
        log.warning("client link to %s: the node reports %s: %s", address, event.code,
                    event.message)
    return False


# -- dialing -------------------------------------------------------------------------------


async def dial(
    host: str,
    port: int,
    *,
    secret: bytes | None,
    client_node: str,
    settings: LinkSettings,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[anyio.abc.ByteStream, Connection, str]:
    """Connect to a node and run the handshake as the dialer.

    Returns the stream, its authenticated codec connection and the node's name.

    Raises:
        AuthenticationError: the secrets differ, or one side has none.
        RemoteProtocolError: the peer broke the protocol (it may not be a GoTask node).
        NotAGoTaskNode: the peer answers in another protocol, or not at all.
        TimeoutError: not connected within `settings.connect_timeout_s`, or the handshake
            began but did not finish within it.
        OSError: the connection was refused or broke.
    """
    timeout_s = settings.connect_timeout_s
    with anyio.fail_after(timeout_s):
        stream: anyio.abc.ByteStream
        if ssl_context is None:
            stream = await anyio.connect_tcp(host, port)
        else:
            stream = await anyio.connect_tcp(host, port, ssl_context=ssl_context)
    try:
        conn = Connection(frame_bytes_max=settings.frame_bytes_max)
        shake = DialerHandshake(secret, client_node, secrets.token_bytes(NONCE_BYTES))
        hs = HandshakeProtocol(conn, shake, now=anyio.current_time(), timeout_s=timeout_s)
        with anyio.fail_after(timeout_s):
            await _handshake(stream, hs, settings.receive_bytes_max)
    except TimeoutError:
        await anyio.aclose_forcefully(stream)
        if hs.peer_node is not None:
            raise
        raise NotAGoTaskNode(f"this is not a GoTask node (it accepted the connection but "
                             f"did not answer the handshake within {timeout_s:g}s); check "
                             "the address and port") from None
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    assert hs.peer_node is not None
    return stream, conn, hs.peer_node


async def _handshake(stream: anyio.abc.ByteStream, hs: HandshakeProtocol, receive_max: int) -> None:
    try:
        await stream.send(hs.start())
        while not hs.done:
            try:
                data = await stream.receive(receive_max)
            except anyio.EndOfStream:
                data = b""
            replies = hs.receive_data(data)
            if replies:
                await stream.send(replies)
    except ProtocolError as exc:
        error = hs.failure_frame(exc)
        if error is not None:
            with anyio.move_on_after(ERROR_FLUSH_S):
                try:
                    await stream.send(hs.conn.send(error))
                except STREAM_ERRORS:
                    pass  # the node is gone already; the error says what went wrong
        raise


# -- addresses and the environment -----------------------------------------------------

#: Where a client looks for a node when told nothing else.
DEFAULT_NODE: Final = f"127.0.0.1:{DEFAULT_PORT}"


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:7450"`` for IPv6; the port defaults to 7450).

    Raises:
        ConfigError: not a host and a port in 1-65535.
    """
    text = text.strip()
    port_text = str(DEFAULT_PORT)
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        if rest:
            port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, a v4 address, or a bare v6 address: the default port
        host = text
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or (
        ":" in host and not _is_ipv6(host)
    ):
        raise ConfigError(f"invalid node address {text!r}: expected HOST:PORT")
    return host, int(port_text)


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def nodes_from_env(environ: Mapping[str, str]) -> list[str]:
    """Node addresses from `GOTASK_NODES` (comma-separated), else `DEFAULT_NODE`."""
    raw = environ.get("GOTASK_NODES", "")
    nodes = [part.strip() for part in raw.split(",") if part.strip()]
    return nodes or [DEFAULT_NODE]


def secret_from_env(environ: Mapping[str, str]) -> bytes | None:
    """The secret in the file named by `GOTASK_SECRET_FILE`, or None when unset.

    Raises:
        ConfigError: the file cannot be read or holds fewer than 16 bytes.
    """
    return read_secret(environ.get("GOTASK_SECRET_FILE") or None)
