"""Opening a link over a trio stream: the handshake as dialer or listener, then the link.

Rules of this module:
- The steps of the handshake and what to tell a peer that fails it are the sans-IO
  `HandshakeProtocol`'s; this module moves its bytes over a `trio.abc.Stream`, within its
  deadline (`due_at`), and starts a `StreamLink` once it succeeds.
- A listener answers a failed proof only after `auth_failure_delay_s` (slows guessing the
  secret), holding no handshake slot while it waits. Who may handshake at once is
  `_admission.HandshakeGate`'s rule (per listener and per source, oldest idle evicted);
  a connection that sends nothing within `first_byte_timeout_s` is closed.
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

from ._admission import HandshakeGate, Slot, source_of
from ._handshake import NONCE_BYTES, DialerHandshake, ListenerHandshake, WireError
from ._link import ERROR_FLUSH_S, STREAM_ERRORS, StreamLink
from ._link_handshake import HandshakeProtocol
from ._link_protocol import LinkOptions
from ._wire import Connection

__all__ = ["HandshakeGate", "accept_link", "dial_link"]

log = logging.getLogger("gotask.transport")


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
    with trio.CancelScope() as scope:
        slot = gate.try_enter(source_of(peer_address), trio.current_time(), scope.cancel)
        _report_shedding(gate)
        if slot is None:
            log.warning("refused %s: %d handshakes from its host already", peer_address,
                        gate.per_source_max)
            await trio.aclose_forcefully(stream)
            return
        try:
            conn, peer = await _accept_handshake(node, stream, secret, options, peer_address,
                                                 gate, slot)
        finally:
            gate.leave(slot)
    if scope.cancelled_caught or peer is None:
        await trio.aclose_forcefully(stream)
        return
    link = StreamLink(node, stream, conn, peer=peer, peer_address=peer_address, options=options)
    await link.run()


def _report_shedding(gate: HandshakeGate) -> None:
    line = gate.shed_report(trio.current_time())
    if line is not None:
        log.warning("%s", line)


async def _accept_handshake(
    node: Node,
    stream: trio.abc.Stream,
    secret: bytes | None,
    options: LinkOptions,
    peer_address: str,
    gate: HandshakeGate,
    slot: Slot,
) -> tuple[Connection, str | None]:
    conn = options.connection()
    shake = ListenerHandshake(secret, node.name, secrets.token_bytes(NONCE_BYTES))
    try:
        await _handshake(stream, conn, shake, options, listener=True,
                         admitted=_Admitted(gate, slot, options.first_byte_timeout_s))
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
    admitted: _Admitted | None = None,
) -> None:
    """Run the handshake; on a protocol failure tell the peer (best effort), then raise.

    A listener's `admitted` slot is given back before any failure delay."""
    hs = HandshakeProtocol(conn, shake, now=trio.current_time(),
                           timeout_s=options.handshake_timeout_s)
    try:
        with trio.fail_at(hs.due_at):
            await _exchange(stream, hs, options.receive_bytes_max, admitted)
    except ProtocolError as exc:
        if admitted is not None:
            admitted.gate.leave(admitted.slot)
        await _refuse(stream, hs, hs.failure_frame(exc), options, listener=listener)
        raise
    except trio.TooSlowError:
        await _refuse(stream, hs, hs.failure_frame(None), options, listener=listener)
        raise hs.timeout_error() from None


@attrs.frozen
class _Admitted:
    """A listener's handshake slot and how long it may wait for the first byte."""

    gate: HandshakeGate
    slot: Slot
    first_byte_timeout_s: float


async def _exchange(stream: trio.abc.Stream, hs: HandshakeProtocol, receive_bytes_max: int,
                    admitted: _Admitted | None) -> None:
    first = hs.start()
    if first:
        await stream.send_all(first)
    if admitted is not None and not hs.done:
        with trio.fail_after(admitted.first_byte_timeout_s):
            data = hs.receive_data(cast(bytes, await stream.receive_some(receive_bytes_max)))
        admitted.gate.first_byte(admitted.slot)
        if data:
            await stream.send_all(data)
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
