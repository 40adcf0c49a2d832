"""TCP transport, with optional TLS: listen, dial, and keep a link up.

Rules of this module:
- Every accepted or dialed connection becomes one `StreamLink` (see `_link.py`): same
  handshake, frames, limits and timeouts as every other transport.
- A node refuses to listen on a non-loopback address without a secret unless told
  `insecure=True`: the shared secret is what keeps strangers out. TLS (an `ssl_context`
  on either side) encrypts; the secret still authenticates.
- Accepted links live in the listener's task: stopping `serve_tcp` closes them. Dialed
  links live in `node.nursery`.
- `maintain_link` redials forever with jittered exponential backoff; the jitter comes
  from `node.world.rng`, so a simulation could replay it (TCP itself never runs there).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from functools import partial

import trio

from gotask._errors import ConfigError, ProtocolError
from gotask.runtime.node import Node

from ._admission import HandshakeGate
from ._link import LinkOptions, StreamLink
from ._link_dial import accept_link, dial_link

__all__ = ["connect_tcp", "maintain_link", "serve_tcp"]

log = logging.getLogger("gotask.transport")

#: What a failed dial raises; `maintain_link` retries after any of these.
DIAL_ERRORS = (OSError, ProtocolError)


def is_loopback(host: str) -> bool:
    """Whether `host` is "localhost" or a loopback IP address (names are not resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, secret: bytes | None, insecure: bool) -> None:
    if secret is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host or 'all interfaces'!r} without a secret: "
            "set a shared secret, or pass insecure=True (--insecure) to accept anyone"
        )
    if secret is None and not is_loopback(host):
        log.warning("listening on %s without a secret (--insecure): anyone who can reach "
                    "the port can run jobs and read results", host or "all interfaces")


async def serve_tcp(
    node: Node,
    host: str,
    port: int,
    *,
    secret: bytes | None,
    insecure: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    options: LinkOptions = LinkOptions(),  # noqa: B008 (frozen, so sharing it is safe)
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept links from nodes and clients on `host`:`port` until cancelled.

    Args:
        host: address to bind; "" binds every interface.
        port: TCP port; 0 picks a free one (reported through `task_status`).
        secret: the shared secret peers must prove, or None for no authentication.
        insecure: allow a non-loopback bind without a secret.
        ssl_context: a server-side context to speak TLS.
        options: timeouts and limits of every accepted link.

    Reports the bound port with `task_status.started(port)`.

    Raises:
        ConfigError: a non-loopback `host` without a secret and without `insecure`.
        OSError: the address cannot be bound.
    """
    _check_bind(host, secret, insecure)
    tcp_listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound_port: int = tcp_listeners[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp_listeners)
    if ssl_context is not None:
        listeners = [trio.SSLListener(lst, ssl_context) for lst in tcp_listeners]
    gate = HandshakeGate(options.unauthenticated_max, options.unauthenticated_per_source_max)
    handler = partial(_accept, node, secret=secret, options=options, gate=gate)
    log.info("node %r listening on %s:%d%s", node.name, host or "*", bound_port,
             " (TLS)" if ssl_context is not None else "")
    task_status.started(bound_port)
    await trio.serve_listeners(handler, listeners)


async def _accept(
    node: Node,
    stream: trio.abc.Stream,
    *,
    secret: bytes | None,
    options: LinkOptions,
    gate: HandshakeGate,
) -> None:
    await accept_link(node, stream, secret=secret, options=options, gate=gate,
                      peer_address=peer_address(stream))


def peer_address(stream: trio.abc.Stream) -> str:
    """The remote "host:port" of a TCP or TLS stream, or "?" when unknown."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"
    return "?"


async def connect_tcp(
    node: Node,
    host: str,
    port: int,
    *,
    secret: bytes | None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    options: LinkOptions = LinkOptions(),  # noqa: B008 (frozen, so sharing it is safe)
) -> StreamLink:
    """Dial `host`:`port`, handshake, and return the link, attached and running.

    Args:
        secret: the shared secret, or None when the listener has none.
        ssl_context: a client-side context to speak TLS.
        server_hostname: the name the server's certificate must carry; default `host`.
        options: timeouts and limits of this link.

    Raises:
        OSError: the connection failed or timed out (`TimeoutError`, after
            `options.connect_timeout_s` or `options.handshake_timeout_s`).
        AuthenticationError: the secrets differ, or one side has none.
        RemoteProtocolError: the listener broke the protocol.
    """
    address = f"{host}:{port}"
    try:
        with trio.fail_after(options.connect_timeout_s):
            tcp = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise TimeoutError(f"connect to {address} timed out") from None
    stream: trio.abc.Stream = tcp
    if ssl_context is not None:
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
    return await dial_link(node, stream, secret=secret, options=options, peer_address=address)


async def maintain_link(
    node: Node,
    host: str,
    port: int,
    *,
    secret: bytes | None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    options: LinkOptions = LinkOptions(),  # noqa: B008 (frozen, so sharing it is safe)
    backoff_base_s: float = 0.1,
    backoff_cap_s: float = 5.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a link to `host`:`port` up until cancelled, redialling after every loss.

    Waits `backoff(n)` seconds before retry n (0, 1, ...): uniform in [d/2, d] with
    d = min(backoff_cap_s, backoff_base_s * 2**n), drawn from `node.world.rng`. A link
    that stayed up for `backoff_cap_s` resets n. Reports ready, with the peer's node
    name, after the first link is up; cancelling closes the current link. Arguments as
    for `connect_tcp`.
    """
    dial = partial(connect_tcp, node, host, port, secret=secret, ssl_context=ssl_context,
                   server_hostname=server_hostname, options=options)
    attempt, started = 0, False
    while True:
        try:
            link = await dial()
        except DIAL_ERRORS as exc:
            delay_s = backoff_s(node, attempt, backoff_base_s, backoff_cap_s)
            log.warning("link to %s:%d: %s; retrying in %.2fs", host, port, exc, delay_s)
            attempt += 1
            await trio.sleep(delay_s)
            continue
        if not started:
            started = True
            task_status.started(link.peer)
        attempt = await _hold(link, attempt, backoff_cap_s)
        await trio.sleep(backoff_s(node, attempt, backoff_base_s, backoff_cap_s))
        attempt += 1


async def _hold(link: StreamLink, attempt: int, stable_s: float) -> int:
    """Wait until `link` closes; return the retry count to continue from."""
    up_since_s = trio.current_time()
    try:
        await link.wait_closed()
    finally:
        link.close("maintain_link stopped")
    return 0 if trio.current_time() - up_since_s >= stable_s else attempt


def backoff_s(node: Node, attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before retry `attempt`: jittered in [d/2, d], d capped at `cap_s`."""
    delay_s = min(cap_s, base_s * 2.0 ** min(attempt, 32))
    return node.world.jitter(delay_s / 2, delay_s)
