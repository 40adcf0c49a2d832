"""Sans-IO handshake driver: a side's handshake over the codec, bytes in, bytes out.

Rules of this module:
- No IO, no clock, no trio, no anyio: the shell passes "now" once (the deadline is
  `due_at`), feeds every read to `receive_data` and sends what it returns, until `done`.
- It marks the connection authenticated the moment the handshake succeeds, so the
  frames that follow are read under the full frame limit; bytes the peer sent after its
  last handshake frame stay in the connection for the link.
- A failure raises a `ProtocolError`; `failure_frame` says what to tell the peer before
  closing (and whether to), one rule for every shell.
"""

from __future__ import annotations

from gotask._errors import (
    FramingError,
    InvalidMessage,
    NotAGoTaskNode,
    ProtocolError,
    RemoteProtocolError,
)

from ._handshake import DialerHandshake, ListenerHandshake, WireError, wire_error
from ._wire import CLOSED, NEED_DATA, Connection

__all__ = ["HandshakeProtocol"]


class HandshakeProtocol:
    """One side's handshake over the codec, until the connection is authenticated.

    Use: send `start()`, then feed every read to `receive_data` and send what it returns,
    until `done`; give up at `due_at` (then send `failure_frame(None)`). On a
    `ProtocolError`, send `failure_frame(exc)` (when not empty) and close. Bytes the peer
    sent after its last handshake frame stay in the connection for the link.

    Args:
        conn: the codec connection, not yet authenticated.
        shake: the side's handshake state machine.
        now: the current time, in seconds.
        timeout_s: the whole handshake must finish within this.
    """

    def __init__(
        self,
        conn: Connection,
        shake: DialerHandshake | ListenerHandshake,
        *,
        now: float,
        timeout_s: float,
    ) -> None:
        self.conn, self._shake, self._timeout_s = conn, shake, timeout_s
        #: When the handshake must be done by, in the clock `now` came from.
        self.due_at = now + timeout_s

    @property
    def done(self) -> bool:
        """Whether the handshake succeeded (the connection is now authenticated)."""
        return self._shake.done

    @property
    def peer_node(self) -> str | None:
        """The peer's node name, once its first handshake frame arrived."""
        return self._shake.peer_node

    def start(self) -> bytes:
        """Begin; return the bytes to send first (none for a listener)."""
        return self.conn.send_many(self._shake.start())

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes read from the peer (``b""`` at EOF); return the bytes to send back.

        Raises:
            AuthenticationError: the handshake failed (wrong secret, version, names).
            RemoteProtocolError: the peer broke the protocol or closed the connection.
        """
        conn, shake = self.conn, self._shake
        conn.receive_data(data)
        out: list[bytes] = []
        while not shake.done:
            event = self._next_event()
            if event is NEED_DATA:
                break
            if event is CLOSED:
                raise RemoteProtocolError("the peer closed the connection during the handshake")
            replies = shake.receive(event)
            if shake.done:
                conn.mark_authenticated()
            out.append(conn.send_many(replies))
        return b"".join(out)

    def _next_event(self) -> object:
        """The connection's next event. A dialer names a listener whose first bytes are
        not a frame (an HTTP, Redis or database port); a listener keeps the detail."""
        try:
            return self.conn.next_event()
        except FramingError as exc:
            if self._shake.peer_node is not None or isinstance(self._shake, ListenerHandshake):
                raise
            raise NotAGoTaskNode("this is not a GoTask node (it answers in another "
                                 "protocol); check the address and port") from exc

    def failure_frame(self, exc: ProtocolError | None) -> WireError | None:
        """The frame telling the peer why the handshake failed (None: the deadline passed).

        Returns None when the peer should not be told anything.
        """
        if exc is None:
            return WireError("handshake", "handshake timed out", fatal=True)
        if isinstance(exc, InvalidMessage):
            return WireError("invalid", f"before authentication: {exc}", fatal=True)
        if isinstance(exc, FramingError):
            return wire_error(exc)
        return self._shake.error_reply

    def timeout_error(self) -> TimeoutError:
        """The error for a handshake not done by `due_at`."""
        return TimeoutError(f"handshake not finished within {self._timeout_s:g}s")
