"""The client's connection to one node: anyio TCP (or TLS), the handshake, frames.

Rules of this module:
- Written on anyio, never on trio directly, so the client runs under trio and asyncio.
- A client is a peer that hosts no actors. A `ClientLink` runs the same handshake as a
  node (`DialerHandshake`, nonce from `secrets`) and speaks `Envelope`/`Reply` frames
  through the sans-IO `Connection`: requests go to the broker of the node it reached,
  from `Address(client_node, "$call")`, and replies are matched by `corr`. Envelopes for
  `Address(client_node, "watch")` carrying `JobChanged` are handed to `on_push`.
- Every wait has a deadline: connect and handshake (`connect_timeout_s`), silence
  (`idle_timeout_s`), a stalled write (`write_timeout_s`), each call (its timeout).
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
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import anyio
import anyio.abc
import attrs

from gotask._errors import (
    CallTimeout,
    ConfigError,
    ConnectionLost,
    FramingError,
    InvalidMessage,
    ProtocolError,
    RemoteProtocolError,
)
from gotask._job import JobRecord
from gotask._messages import BROKER, JobChanged
from gotask.config import DEFAULT_PORT, read_secret
from gotask.runtime.message import Address, Envelope, ErrorReply, Reply
from gotask.transports._handshake import (
    NONCE_BYTES,
    DialerHandshake,
    Ping,
    Pong,
    WireError,
    wire_error,
)
from gotask.transports._wire import CLOSED, FRAME_BYTES_MAX, NEED_DATA, Connection

__all__ = [
    "CALLER_NAME",
    "DEFAULT_NODE",
    "WATCH_NAME",
    "ClientLink",
    "LinkSettings",
    "NotSent",
    "dial",
    "nodes_from_env",
    "parse_address",
    "secret_from_env",
]

log = logging.getLogger("gotask.client")

#: The actor name a client's requests come from, and the one its pushes go to.
CALLER_NAME: Final = "$call"
WATCH_NAME: Final = "watch"
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
        write_timeout_s: close when a write makes no progress for this long.
        outbound_max: encoded frames waiting to be written, at most.
        frame_bytes_max: largest frame body once authenticated, in bytes.
        receive_bytes_max: bytes asked of the stream per read.
    """

    connect_timeout_s: float = 5.0
    heartbeat_s: float = 5.0
    idle_timeout_s: float = 20.0
    write_timeout_s: float = 15.0
    outbound_max: int = 1024
    frame_bytes_max: int = FRAME_BYTES_MAX
    receive_bytes_max: int = 256 << 10


class _Closed(Exception):
    """Internal: the link must close; the message is the reason."""


class NotSent(ConnectionLost):
    """The link was closed before the request was queued: it never left (safe to retry)."""


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
        self._stream, self._conn, self._settings = stream, conn, settings
        self._me = Address(client_node, CALLER_NAME)
        self._broker = Address(peer, BROKER)
        self._corr, self._on_push, self._on_close = corr, on_push, on_close
        self._out_send, self._out_recv = anyio.create_memory_object_stream[bytes](
            settings.outbound_max
        )
        self._pending: dict[int, _Call] = {}
        self._scope = anyio.CancelScope()
        self._close_reason: str | None = None
        self._last_sent_s = anyio.current_time()
        self._ping_seq = 0

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else "closed"
        return f"<ClientLink {self._me.node!r}->{self.peer!r} {self.address} {state}>"

    @property
    def closed(self) -> bool:
        """Whether the link has closed."""
        return self._close_reason is not None

    async def call(self, msg: object, timeout_s: float) -> object:
        """Send `msg` to the node's broker and return the reply (maybe an `ErrorReply`).

        Raises:
            LocalProtocolError: `msg` cannot be encoded (nothing was sent).
            NotSent: the link was closed before the request was queued.
            ConnectionLost: the link closed while the request was in flight.
            CallTimeout: no reply within `timeout_s` seconds.
        """
        corr = next(self._corr)
        frame = self._conn.send(Envelope(self._broker, self._me, corr, msg))
        if self._close_reason is not None:
            raise NotSent(f"connection to {self.address} closed: {self._close_reason}")
        call = self._pending[corr] = _Call()
        try:
            await self._queue(frame)
            with anyio.move_on_after(timeout_s):
                await call.done.wait()
        finally:
            del self._pending[corr]
        if call.error is not None:
            raise call.error
        if not call.done.is_set():
            raise CallTimeout(
                f"no reply from {self.address} within {timeout_s:g}s to {type(msg).__name__}"
            )
        return call.reply

    async def send(self, msg: object) -> None:
        """Send `msg` to the node's broker, no reply expected; dropped if the link closed."""
        try:
            await self._queue(self._conn.send(Envelope(self._broker, self._me, 0, msg)))
        except NotSent:
            log.debug("client link to %s: %s not sent, link closed", self.address,
                      type(msg).__name__)

    async def _queue(self, frame: bytes) -> None:
        try:
            await self._out_send.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise NotSent(f"connection to {self.address} closed: {self._close_reason}") from None

    # -- lifetime ----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run reader, writer and heartbeat until the link closes; then close the stream.

        Never raises but cancellation: every failure closes the link and is logged.
        """
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._guard, self._read_loop)
                    tg.start_soon(self._guard, self._write_loop)
                    tg.start_soon(self._guard, self._heartbeat_loop)
                    task_status.started()
        finally:
            self.close(self._close_reason or "cancelled")
            await anyio.aclose_forcefully(self._stream)
            log.info("client link to %s (%s) closed: %s", self.peer, self.address,
                     self._close_reason)

    def close(self, reason: str = "closed by the client") -> None:
        """Close now: stop the tasks and fail every waiting call with `ConnectionLost`."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        self._scope.cancel()
        self._out_recv.close()  # first: wakes senders waiting for room, with an error
        self._out_send.close()
        for call in self._pending.values():
            if not call.done.is_set():
                call.error = ConnectionLost(
                    f"connection to {self.address} lost with a request in flight: {reason}"
                )
                call.done.set()
        self._on_close(self)

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
            reason = "stopped"
        except _Closed as exc:
            reason = str(exc)
        except STREAM_ERRORS as exc:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except Exception as exc:  # a bug must fail the calls, not hang them: log it loudly
            log.exception("client link to %s failed", self.address)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        self.close(reason)

    # -- writing -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        timeout_s = self._settings.write_timeout_s
        while True:
            frames = [await self._out_recv.receive()]
            try:
                while True:
                    frames.append(self._out_recv.receive_nowait())
            except anyio.WouldBlock:
                pass
            with anyio.move_on_after(timeout_s) as scope:
                await self._stream.send(b"".join(frames))
            if scope.cancelled_caught:
                raise _Closed(f"write stalled for {timeout_s:g}s: the node is not reading")
            self._last_sent_s = anyio.current_time()

    def _send_control(self, msg: object) -> None:
        try:
            self._out_send.send_nowait(self._conn.send(msg))
        except anyio.WouldBlock:
            log.debug("client link to %s: %s dropped, buffer full", self.address,
                      type(msg).__name__)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _heartbeat_loop(self) -> None:
        every_s = self._settings.heartbeat_s
        while True:
            due_s = self._last_sent_s + every_s
            if anyio.current_time() < due_s:
                await anyio.sleep(due_s - anyio.current_time())
                continue
            self._ping_seq += 1
            self._send_control(Ping(self._ping_seq))
            await anyio.sleep(every_s)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._settings.idle_timeout_s
        while True:
            self._drain()
            with anyio.move_on_after(idle_s):
                try:
                    data = await self._stream.receive(self._settings.receive_bytes_max)
                except anyio.EndOfStream:
                    data = b""
                self._conn.receive_data(data)
                continue
            raise _Closed(f"nothing received for {idle_s:g}s")

    def _drain(self) -> None:
        """Handle every complete frame."""
        while True:
            try:
                event = self._conn.next_event()
            except InvalidMessage as exc:
                self._on_invalid(exc)
                continue
            except FramingError as exc:
                self._send_control(wire_error(exc))
                raise _Closed(f"framing error: {exc}") from None
            if event is NEED_DATA:
                return
            if event is CLOSED:
                raise _Closed("the node closed the connection")
            self._on_event(event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, Reply):
            self._resolve(event.corr, event.msg)
        elif isinstance(event, Envelope):
            self._on_envelope(event)
        elif isinstance(event, Ping):
            self._send_control(Pong(event.seq))
        elif isinstance(event, WireError):
            log.warning("client link to %s: the node reports %s: %s", self.address,
                        event.code, event.message)
            if event.fatal:
                raise _Closed(f"the node reported a fatal error: {event.code}: {event.message}")
        elif not isinstance(event, Pong):
            text = f"unexpected {type(event).__name__} after the handshake"
            self._send_control(WireError("invalid", text, fatal=False))

    def _resolve(self, corr: int, msg: object) -> None:
        call = self._pending.get(corr)
        if call is None or call.done.is_set():
            log.debug("client link to %s: late reply %d dropped", self.address, corr)
            return
        call.reply = msg
        call.done.set()

    def _on_envelope(self, env: Envelope) -> None:
        if env.dst.name == WATCH_NAME and isinstance(env.msg, JobChanged):
            self._on_push(env.msg.job)
        elif env.corr and env.src is not None:
            error = ErrorReply("ActorNotFound", f"no actor {env.dst.name!r}: clients host none", "")
            self._send_control(Reply(env.src.node, env.corr, error))
        else:
            log.debug("client link to %s: dropped %s for %s", self.address,
                      type(env.msg).__name__, env.dst)

    def _on_invalid(self, exc: InvalidMessage) -> None:
        log.warning("client link to %s: invalid message: %s", self.address, exc)
        call = self._pending.get(exc.corr) if exc.corr else None
        if call is not None and not call.done.is_set():
            call.error = RemoteProtocolError(f"the node answered with an invalid message: {exc}")
            call.done.set()


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
        TimeoutError: not connected and authenticated within `settings.connect_timeout_s`.
        OSError: the connection was refused or broke.
    """
    with anyio.fail_after(settings.connect_timeout_s):
        stream: anyio.abc.ByteStream
        if ssl_context is None:
            stream = await anyio.connect_tcp(host, port)
        else:
            stream = await anyio.connect_tcp(host, port, ssl_context=ssl_context)
        try:
            conn = Connection(frame_bytes_max=settings.frame_bytes_max)
            shake = DialerHandshake(secret, client_node, secrets.token_bytes(NONCE_BYTES))
            await _handshake(stream, conn, shake, settings.receive_bytes_max)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
    assert shake.peer_node is not None
    return stream, conn, shake.peer_node


async def _handshake(
    stream: anyio.abc.ByteStream, conn: Connection, shake: DialerHandshake, receive_max: int
) -> None:
    await stream.send(conn.send_many(shake.start()))
    while not shake.done:
        try:
            replies = shake.receive(await _next_message(stream, conn, receive_max))
        except ProtocolError:
            if shake.error_reply is not None:
                with anyio.move_on_after(1.0):
                    await stream.send(conn.send(shake.error_reply))
            raise
        if shake.done:
            conn.mark_authenticated()
        if replies:
            await stream.send(conn.send_many(replies))


async def _next_message(stream: anyio.abc.ByteStream, conn: Connection, receive_max: int) -> object:
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            try:
                conn.receive_data(await stream.receive(receive_max))
            except anyio.EndOfStream:
                conn.receive_data(b"")
        elif event is CLOSED:
            raise RemoteProtocolError("the node closed the connection during the handshake")
        else:
            return event


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
