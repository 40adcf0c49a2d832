"""Sans-IO link protocol: the one state machine every link runs, node or client.

Rules of this module:
- No IO, no clock, no trio, no anyio, no actors. A shell feeds it bytes and "now" values
  (seconds on one monotonic clock), writes what `take_outbound()` returns, and calls
  `tick(now)` when `next_due(now)` comes; every decision of the link is taken here, so a
  trio task, an anyio task or a plain blocking-socket loop can drive it alike (as
  hypercorn runs one protocol class under two event loops).
- `LinkProtocol` runs an authenticated link; `HandshakeProtocol` (in `_link_handshake`,
  re-exported here) drives the handshake before it, within one deadline (`due_at`).
- Outbound: messages are encoded at once (the caller gets `LocalProtocolError`) and their
  frames queued in one buffer bounded by count and bytes; a single frame larger than
  the byte bound is accepted into an empty buffer. The shell takes everything queued in
  one write. Control frames (Ping, Pong, non-fatal errors, refusals) are dropped when the
  buffer is full: the peer is busy. A fatal error goes ahead of the limits.
- Inbound: `next_events()` returns each `Envelope` and `Reply` as decoded (the hot path
  copies nothing), an `InvalidReceived` for an invalid message (its non-fatal
  `WireError` is already queued; `reply` is the `ErrorReply` its caller should get), a
  non-fatal `WireError` the peer reported, and, for links that correlate their own calls
  (`calls=True`), a `CallDone` in place of each awaited `Reply`; late replies are
  dropped. A `Ping` is answered with a `Pong`. Broken framing, a fatal `WireError`, or
  the peer closing raise `LinkClosed`, after the events that came before it.
- Every wait has a due-at deadline: a heartbeat `Ping` after `heartbeat_s` without
  sending; silence while waiting for data (`idle_timeout_s`); a frame left incomplete
  (`frame_timeout_s`); a write making no progress (`write_timeout_s`); each call's
  timeout. `tick(now)` applies them; `next_due(now)` says when to tick next, never more
  than the shortest link timeout ahead, so a deadline set meanwhile (at least that far
  ahead) is never missed. Only a call started with a shorter timeout needs an earlier
  tick (see `start_call`).
- After `close(reason)` no control frame is queued (shells check `closed` before they
  `push`); the calls still waiting are returned failed with `ConnectionLost`.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Final

import attrs

from gotask._errors import (
    CallTimeout,
    ConnectionLost,
    FramingError,
    InvalidMessage,
    ProtocolError,
    RemoteProtocolError,
)
from gotask.runtime.message import Envelope, ErrorReply, Reply

from ._handshake import Ping, Pong, WireError, wire_error
from ._link_handshake import HandshakeProtocol as HandshakeProtocol
from ._wire import CLOSED, NEED_DATA, Connection

__all__ = [
    "CallDone",
    "HandshakeProtocol",
    "InvalidReceived",
    "LinkClosed",
    "LinkOptions",
    "LinkProtocol",
    "failure_reason",
]


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
        unauthenticated_max: connections one listener lets handshake at once; a new one
            evicts the oldest idle (see `_admission`).
        unauthenticated_per_source_max: of those, at most this many from one host.
        first_byte_timeout_s: a listener closes a connection that sent nothing for this
            long (shorter than the handshake's whole deadline).
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
    unauthenticated_per_source_max: int = attrs.field(default=8, validator=_positive)
    first_byte_timeout_s: float = attrs.field(default=2.0, validator=_positive)
    receive_bytes_max: int = attrs.field(default=256 << 10, validator=_positive)

    def connection(self) -> Connection:
        """A fresh codec connection with these frame limits."""
        return Connection(
            frame_bytes_max=self.frame_bytes_max,
            preauth_frame_bytes_max=self.preauth_frame_bytes_max,
        )


class LinkClosed(Exception):
    """The link must close; `str(exc)` says why.

    Attributes:
        flush: a fatal error frame was queued: write it (briefly) before closing.
    """

    def __init__(self, reason: str, *, flush: bool = False) -> None:
        super().__init__(reason)
        self.flush = flush


def failure_reason(
    exc: Exception, stream_errors: tuple[type[BaseException], ...]
) -> tuple[str, bool]:
    """Why a link closes after one of its tasks raised `exc`, and whether that is a bug.

    Args:
        exc: what the task raised.
        stream_errors: what the shell's streams raise when broken or closed.

    Returns:
        The close reason, and True when `exc` is none of the expected failures (a bug,
        to log with its traceback).
    """
    if isinstance(exc, LinkClosed):
        return str(exc), False
    if isinstance(exc, stream_errors):
        return f"connection lost: {type(exc).__name__}: {exc}", False
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}", False
    return f"internal error: {type(exc).__name__}: {exc}", True


@attrs.frozen
class InvalidReceived:
    """The peer sent an invalid message; its non-fatal `WireError` is already queued.

    Attributes:
        error: what was wrong with it.
        reply: the `ErrorReply` for the caller that sent it, when known; the shell hands
            it to whoever routes replies (the node), or writes it.
    """

    error: InvalidMessage
    reply: Reply | None


@attrs.frozen
class CallDone:
    """A call started with `start_call` finished: `reply` came, or `error` ended it."""

    corr: int
    reply: object = None
    error: Exception | None = None


@attrs.define
class _Call:
    due_s: float
    timeout_s: float
    what: str


#: The link's outbound frames are joined and taken at once; this is the empty take.
_NOTHING: Final = b""


class LinkProtocol:
    """An authenticated link's state: outbound buffer, inbound events, deadlines, calls.

    Args:
        conn: the authenticated codec connection.
        options: the link's timeouts and limits.
        now: the current time, in seconds.
        peer: the peer's address, for error texts.
        calls: correlate this side's own calls (`start_call`): replies become `CallDone`.

    Attributes:
        out: the queued frames; the shell may read its length (never rebind it).
        out_bytes: bytes in `out`.
        close_reason: why the link closed, or None while it is open.
    """

    def __init__(
        self,
        conn: Connection,
        options: LinkOptions,
        *,
        now: float,
        peer: str = "the peer",
        calls: bool = False,
    ) -> None:
        self.conn, self.options, self.peer = conn, options, peer
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.close_reason: str | None = None
        self.last_sent_s = now
        self.read_deadline_s = math.inf
        self.write_deadline_s = math.inf
        self._correlates = calls
        self._calls: dict[int, _Call] = {}
        self._call_dues: list[tuple[float, int]] = []  # a heap; entries of ended calls stay
        self._handled = 0  # frames taken since the last `wait_reading`
        self._partial_since_s: float | None = None
        self._fatal: str | None = None  # a fatal WireError came: raise after its batch
        self._next_ping_s = -math.inf
        self._ping_seq = 0
        self._horizon_s = min(
            options.idle_timeout_s, options.frame_timeout_s, options.write_timeout_s
        )

    # -- outbound --------------------------------------------------------------------

    def encode(self, item: object) -> bytes:
        """The frame carrying `item`.

        Raises:
            LocalProtocolError: `item` cannot be encoded or exceeds the frame limit.
        """
        return self.conn.send(item)

    def has_room(self, size: int) -> bool:
        """Whether a frame of `size` bytes fits in the outbound buffer now."""
        out = self.out
        return not out or (
            len(out) < self.options.outbound_max
            and self.out_bytes + size <= self.options.outbound_bytes_max
        )

    def push(self, data: bytes) -> None:
        """Queue an encoded frame, without checking room (see `has_room`)."""
        self.out.append(data)
        self.out_bytes += len(data)

    def take_outbound(self) -> bytes:
        """Everything queued, as one bytes object to write (``b""`` when nothing is)."""
        out = self.out
        if not out:
            return _NOTHING
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_bytes = 0
        return data

    def send_control(self, msg: object) -> bool:
        """Queue a control frame unless the link is closed or the buffer full; False then."""
        data = self.conn.send(msg)
        if self.close_reason is None and self.has_room(len(data)):
            self.push(data)
            return True
        return False

    def refuse(self, env: Envelope, error_type: str, text: str) -> None:
        """Answer the call in `env` (if it is one) with an `ErrorReply`, as control."""
        if env.corr and env.src is not None:
            self.send_control(Reply(env.src.node, env.corr, ErrorReply(error_type, text, "")))

    def queue_fatal(self, error: WireError) -> None:
        """Queue a fatal error frame ahead of the limits, to write before closing."""
        self.push(self.conn.send(error))

    # -- writing and reading: the shell reports, the deadlines follow -----------------

    def write_started(self, now: float) -> None:
        """A write (of at most 64 KiB) begins: it must progress within `write_timeout_s`."""
        self.write_deadline_s = now + self.options.write_timeout_s

    def write_finished(self, now: float) -> None:
        """The write completed."""
        self.write_deadline_s = math.inf
        self.last_sent_s = now

    def wait_reading(self, now: float) -> None:
        """The shell is about to wait for data: set the silence or incomplete-frame deadline.

        Deadlines run only while the shell waits for data, never while it delivers.
        """
        if not self.conn.buffered_bytes:
            self._partial_since_s = None
        elif self._handled or self._partial_since_s is None:
            self._partial_since_s = now
        self._handled = 0
        since_s = self._partial_since_s
        if since_s is None:
            self.read_deadline_s = now + self.options.idle_timeout_s
        else:
            self.read_deadline_s = since_s + self.options.frame_timeout_s

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer (``b""`` at EOF); take `next_events()` next."""
        self.read_deadline_s = math.inf
        self.conn.receive_data(data)

    # -- inbound ---------------------------------------------------------------------

    def next_events(self) -> list[object]:
        """Every event whole in the buffer (see the module rules); [] when it needs data.

        Call until it returns [] before the next `receive_data`.

        Raises:
            LinkClosed: the peer closed, broke the framing (a fatal error frame is queued:
                `flush`), or reported a fatal error.
        """
        while True:
            if self._fatal is not None:
                raise LinkClosed(self._fatal)
            events = self.conn.next_events()
            if not events:
                events = self._next_single()
                if not events:
                    return events
            self._handled += len(events)
            if not self._correlates:  # the hot path: a batch of envelopes and replies
                envelope, reply = Envelope, Reply
                for event in events:
                    kind = type(event)
                    if kind is not envelope and kind is not reply:
                        break
                else:
                    return events
            events = self._sort(events)
            if events:
                return events

    def _next_single(self) -> list[object]:
        try:
            event = self.conn.next_event()
        except InvalidMessage as exc:
            return [exc]
        except FramingError as exc:
            self.queue_fatal(wire_error(exc))
            raise LinkClosed(f"framing error: {exc}", flush=True) from None
        if event is NEED_DATA:
            return []
        if event is CLOSED:
            raise LinkClosed("the peer closed the connection")
        return [event]

    def _sort(self, events: list[object]) -> list[object]:
        """The events for the shell, once control frames and replies are dealt with."""
        kept: list[object] = []
        for event in events:
            if isinstance(event, Envelope):
                kept.append(event)
            elif isinstance(event, Reply):
                kept.append(self._on_reply(event) if self._correlates else event)
            elif isinstance(event, InvalidMessage):
                kept.append(self._on_invalid(event))
            elif self._on_control(event):
                kept.append(event)
            if self._fatal is not None:
                break  # the events before a fatal error still count; `next_events` raises
        return [event for event in kept if event is not None]

    def _on_reply(self, reply: Reply) -> CallDone | None:
        if self._calls.pop(reply.corr, None) is None:
            return None  # late: its call timed out or was abandoned
        return CallDone(reply.corr, reply.msg)

    def _on_invalid(self, exc: InvalidMessage) -> InvalidReceived | CallDone:
        self.send_control(wire_error(exc))
        if exc.corr and self._calls.pop(exc.corr, None) is not None:
            text = f"{self.peer} answered with an invalid message: {exc}"
            return CallDone(exc.corr, error=RemoteProtocolError(text))
        reply = None
        if exc.corr and exc.reply_node is not None:
            error = ErrorReply("InvalidMessage", f"the receiving node refused it: {exc}", "")
            reply = Reply(exc.reply_node, exc.corr, error)
        return InvalidReceived(exc, reply)

    def _on_control(self, msg: object) -> bool:
        """Handle a control frame; True when the shell should see it (to log it)."""
        if isinstance(msg, Ping):
            self.send_control(Pong(msg.seq))
        elif isinstance(msg, WireError):
            if msg.fatal:
                self._fatal = f"the peer reported a fatal error: {msg.code}: {msg.message}"
            return True
        elif not isinstance(msg, Pong):
            text = f"unexpected {type(msg).__name__} after the handshake"
            self.send_control(WireError("invalid", text, fatal=False))
        return False

    # -- deadlines and calls ---------------------------------------------------------

    def start_call(self, corr: int, now: float, timeout_s: float, what: str) -> float:
        """Await a reply to call `corr` for `timeout_s` seconds; return when it is due.

        Its `CallDone` comes from `next_events` (the reply), `tick` (the timeout) or
        `close`. When the due time is earlier than the shell's next tick, tick earlier.
        """
        due_s = now + timeout_s
        self._calls[corr] = _Call(due_s, timeout_s, what)
        heapq.heappush(self._call_dues, (due_s, corr))
        return due_s

    def forget_call(self, corr: int) -> None:
        """Stop awaiting call `corr` (its caller gave up); a late reply is dropped."""
        self._calls.pop(corr, None)

    def next_due(self, now: float) -> float:
        """When `tick` must run next: never later than the shortest link timeout ahead."""
        due_s = min(
            self._ping_due_s(),
            self.read_deadline_s,
            self.write_deadline_s,
            now + self._horizon_s,
        )
        dues = self._call_dues
        while dues and dues[0][1] not in self._calls:
            heapq.heappop(dues)
        return min(due_s, dues[0][0]) if dues else due_s

    def _ping_due_s(self) -> float:
        return max(self.last_sent_s + self.options.heartbeat_s, self._next_ping_s)

    def tick(self, now: float) -> list[CallDone]:
        """Apply every deadline due at `now`: queue a heartbeat, time out calls.

        Returns the calls that timed out.

        Raises:
            LinkClosed: a write stalled, or the peer was silent (or left a frame
                incomplete) for too long.
        """
        opts = self.options
        if now >= self.write_deadline_s:
            stalled_s = opts.write_timeout_s
            raise LinkClosed(f"write stalled for {stalled_s:g}s: the peer is not reading")
        if now >= self.read_deadline_s:
            if self._partial_since_s is not None:
                raise LinkClosed(f"a frame still incomplete after {opts.frame_timeout_s:g}s")
            raise LinkClosed(f"nothing received for {opts.idle_timeout_s:g}s")
        if now >= self._ping_due_s():
            self._ping_seq += 1
            self.send_control(Ping(self._ping_seq))
            self._next_ping_s = now + opts.heartbeat_s
        return self._time_out_calls(now)

    def _time_out_calls(self, now: float) -> list[CallDone]:
        done: list[CallDone] = []
        dues, calls = self._call_dues, self._calls
        while dues and dues[0][0] <= now:
            _, corr = heapq.heappop(dues)
            call = calls.get(corr)
            if call is None or call.due_s > now:
                continue  # ended already, or a newer call reuses the number
            del calls[corr]
            text = f"no reply from {self.peer} within {call.timeout_s:g}s to {call.what}"
            done.append(CallDone(corr, error=CallTimeout(text)))
        return done

    # -- closing ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self.close_reason is not None

    def close(self, reason: str) -> list[CallDone]:
        """Close (once; later calls return []); return the calls left, failed.

        Their error is `ConnectionLost`: the request was sent, its fate is unknown.
        """
        if self.close_reason is not None:
            return []
        self.close_reason = reason
        text = f"connection to {self.peer} lost with a request in flight: {reason}"
        done = [CallDone(corr, error=ConnectionLost(text)) for corr in self._calls]
        self._calls.clear()
        self._call_dues.clear()
        return done
