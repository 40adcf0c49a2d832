"""Opening a link over a trio stream: the handshake as dialer or listener, then the link.

Rules of this module:
- The steps of the handshake and what to tell a peer that fails it are the sans-IO
  `HandshakeProtocol`'s; this module moves its bytes over a `trio.abc.Stream`, within its
  deadline (`due_at`), and starts a `StreamLink` once it succeeds.
- A listener answers a failed proof only after `auth_failure_delay_s` (slows guessing the
  secret), and lets at most `unauthenticated_max` connections handshake at once
  (`HandshakeGate`).
- Nonces come from `secrets`, never from the World. Secrets are never logged.
- `accept_link` never raises but `Cancelled`: a failed handshake is logged and the stream
  closed. `dial_link` raises, for the dialer to retry.
"""

from __future__ import annotations

import logging
import secrets
from typing import cast

import attrs
import trio

from gotask._errors import ProtocolError, RemoteProtocolError
from gotask.runtime.node import Node

from ._handshake import NONCE_BYTES, DialerHandshake, ListenerHandshake, WireError
from ._link import ERROR_FLUSH_S, STREAM_ERRORS, StreamLink
from ._link_handshake import HandshakeProtocol
from ._link_protocol import LinkOptions
from ._wire import Connection

__all__ = ["HandshakeGate", "accept_link", "dial_link"]

log = logging.getLogger("gotask.transport")


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
    hs = HandshakeProtocol(conn, shake, now=trio.current_time(),
                           timeout_s=options.handshake_timeout_s)
    try:
        with trio.fail_at(hs.due_at):
            await _exchange(stream, hs, options.receive_bytes_max)
    except ProtocolError as exc:
        await _refuse(stream, hs, hs.failure_frame(exc), options, listener=listener)
        raise
    except trio.TooSlowError:
        await _refuse(stream, hs, hs.failure_frame(None), options, listener=listener)
        raise hs.timeout_error() from None


async def _exchange(stream: trio.abc.Stream, hs: HandshakeProtocol, receive_bytes_max: int) -> None:
    first = hs.start()
    if first:
        await stream.send_all(first)
    while not hs.done:
        data = hs.receive_data(cast(bytes, await stream.receive_some(receive_bytes_max)))
        if data:
            await stream.send_all(data)


async def _refuse(
    stream: trio.abc.Stream,
    hs: HandshakeProtocol,
    error: WireError | None,
    options: LinkOptions,
    *,
    listener: bool,
) -> None:
    """Tell the peer why the handshake failed, best effort."""
    if error is None:
        return
    if listener and error.code == "auth":
        await trio.sleep(options.auth_failure_delay_s)  # slows down guessing the secret
    with trio.move_on_after(ERROR_FLUSH_S):
        try:
            await stream.send_all(hs.conn.send(error))
        except STREAM_ERRORS:
            pass  # the peer is gone already; closing is all that is left to do
