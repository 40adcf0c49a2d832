"""Sans-IO handshake and control messages of the wire protocol.

Rules of this module:
- Two pure state machines, one per side. No IO, no clock, no randomness: the caller
  supplies the 32-byte nonce (the transport draws it from `secrets`).
- Dialer -> Hello (its nonce); listener -> Welcome (its nonce, no proof); dialer -> Auth
  with its proof; the listener checks it and only then answers AuthOk with its own proof,
  which the dialer checks. So the listener, which anyone can reach, never says anything
  that depends on the secret to a peer that has not proved it first: nothing to guess
  the secret from offline. A proof is HMAC-SHA256(secret, role label + version + both
  nonces + both node names), so it holds for one connection only and cannot be reflected
  to the other role.
- Without a secret a proof is empty. A listener without a secret accepts any dialer (it
  cannot check a proof) and proves nothing; a dialer with a secret then refuses it. A
  listener with a secret accepts only the right proof, so an empty one is refused.
- A failure raises `AuthenticationError` and leaves `error_reply`, the `WireError` to send
  before closing. The secret never appears in an exception, a message or a repr.
- Never imports trio.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import attrs

from gotask._errors import (
    AuthenticationError,
    FramingError,
    InvalidMessage,
    LocalProtocolError,
    ProtocolError,
)
from gotask.runtime.message import message

__all__ = [
    "NODE_NAME_MAX",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Auth",
    "AuthOk",
    "DialerHandshake",
    "Hello",
    "ListenerHandshake",
    "Ping",
    "Pong",
    "Welcome",
    "WireError",
    "wire_error",
]

PROTOCOL_VERSION: Final = 2
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (PROTOCOL_VERSION,)
NONCE_BYTES: Final = 32
#: Longest node name, in characters.
NODE_NAME_MAX: Final = 200

_LISTENER_LABEL = b"gotask-listener"
_DIALER_LABEL = b"gotask-dialer"


@message("w.hello")
@attrs.frozen
class Hello:
    """The dialer's first frame: versions it speaks, its node name, a fresh 32-byte nonce."""

    versions: tuple[int, ...]
    node: str
    nonce: bytes


@message("w.welcome")
@attrs.frozen
class Welcome:
    """The listener's answer: chosen version, its node name and nonce (no proof yet)."""

    version: int
    node: str
    nonce: bytes


@message("w.auth")
@attrs.frozen
class Auth:
    """The dialer's proof that it knows the shared secret."""

    proof: bytes


@message("w.authok")
@attrs.frozen
class AuthOk:
    """The listener accepted the dialer; its own proof, for the dialer to check."""

    proof: bytes


@message("w.ping")
@attrs.frozen
class Ping:
    """Heartbeat; the peer answers `Pong` with the same `seq`."""

    seq: int


@message("w.pong")
@attrs.frozen
class Pong:
    """Answer to `Ping`."""

    seq: int


@message("w.error")
@attrs.frozen
class WireError:
    """A protocol error reported to the peer; `fatal` means the sender closes next.

    Codes: "framing", "invalid", "version", "auth", "handshake".
    """

    code: str
    message: str
    fatal: bool


def wire_error(exc: ProtocolError) -> WireError:
    """Return the error frame reporting `exc` to the peer; fatal unless `InvalidMessage`."""
    if isinstance(exc, InvalidMessage):
        return WireError("invalid", str(exc), fatal=False)
    code = "framing" if isinstance(exc, FramingError) else "handshake"
    return WireError(code, str(exc), fatal=True)


def _proof(
    secret: bytes | None,
    label: bytes,
    version: int,
    nonces: tuple[bytes, bytes],
    nodes: tuple[str, str],
) -> bytes:
    """HMAC-SHA256 over label, version, dialer and listener nonce, dialer and listener node."""
    if secret is None:
        return b""
    parts = [label, version.to_bytes(4, "big"), *nonces]
    for node in nodes:
        raw = node.encode()
        parts += [len(raw).to_bytes(2, "big"), raw]
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def _check_local(secret: bytes | None, node: str, nonce: bytes, versions: tuple[int, ...]) -> None:
    if secret is not None and (not isinstance(secret, bytes) or not secret):
        raise ValueError("secret must be non-empty bytes, or None for no authentication")
    if not isinstance(node, str) or not 1 <= len(node) <= NODE_NAME_MAX:
        raise ValueError(f"node name must be 1-{NODE_NAME_MAX} characters")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    if not versions or not all(type(v) is int and 0 <= v < 1 << 32 for v in versions):
        raise ValueError("versions must be a non-empty tuple of 32-bit unsigned ints")


class _Handshake:
    """State shared by both sides; `_state` moves forward to "done" or "failed"."""

    _role = "handshake"

    def __init__(
        self,
        secret: bytes | None,
        node: str,
        nonce: bytes,
        *,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
    ) -> None:
        _check_local(secret, node, nonce, versions)
        self._secret = secret
        self._node = node
        self._nonce = nonce
        self._versions = versions
        self._state = "start"
        self._peer_nonce = b""
        #: The peer's node name, once its first handshake frame arrived.
        self.peer_node: str | None = None
        #: The protocol version agreed on, once known.
        self.version: int | None = None
        #: The frame to send the peer before closing, after a failure.
        self.error_reply: WireError | None = None

    @property
    def done(self) -> bool:
        """Whether the handshake succeeded: mark the connection authenticated."""
        return self._state == "done"

    def __repr__(self) -> str:
        secret = "set" if self._secret is not None else "none"
        return f"<{type(self).__name__} node={self._node!r} state={self._state} secret={secret}>"

    def receive(self, msg: object) -> list[object]:
        """Apply one message from the peer and return the messages to send back.

        Raises:
            AuthenticationError: the handshake failed; send `error_reply` (if any), close.
            LocalProtocolError: called after the handshake finished or failed.
        """
        if self._state in ("start", "done", "failed"):
            raise LocalProtocolError(f"{self._role} handshake is {self._state}: cannot receive")
        if isinstance(msg, WireError):
            self._state = "failed"
            raise AuthenticationError(f"the peer refused the handshake: {msg.code}: {msg.message}")
        try:
            return self._receive(msg)
        except AuthenticationError:
            self._state = "failed"
            raise

    def _receive(self, msg: object) -> list[object]:
        raise NotImplementedError

    def _fail(self, code: str, wire_text: str, detail: str = "") -> AuthenticationError:
        self.error_reply = WireError(code, wire_text, fatal=True)
        return AuthenticationError(f"{self._role} handshake failed: {detail or wire_text}")

    def _unexpected(self, msg: object) -> AuthenticationError:
        text = f"unexpected {type(msg).__name__} in state {self._state}"
        return self._fail("handshake", text)

    def _check_peer(self, node: str, nonce: bytes) -> None:
        if not 1 <= len(node) <= NODE_NAME_MAX:
            raise self._fail("handshake", f"node name must be 1-{NODE_NAME_MAX} characters")
        if len(nonce) != NONCE_BYTES:
            raise self._fail("handshake", f"nonce must be {NONCE_BYTES} bytes")
        if hmac.compare_digest(nonce, self._nonce):
            raise self._fail("auth", "authentication failed", "the peer replayed our own nonce")
        self.peer_node = node
        self._peer_nonce = nonce


class ListenerHandshake(_Handshake):
    """The accepting side: waits for Hello, answers Welcome, checks Auth, answers AuthOk.

    The listener proves nothing until the dialer has proved it knows the secret.

    Args:
        secret: the shared secret, or None to run without authentication.
        node: this node's name, 1-200 characters.
        nonce: 32 fresh random bytes for this connection.
        versions: protocol versions this side speaks.
    """

    _role = "listener"

    def start(self) -> list[object]:
        """Begin; the listener speaks second, so there is nothing to send yet."""
        self._state = "hello"
        return []

    def _receive(self, msg: object) -> list[object]:
        if isinstance(msg, Hello) and self._state == "hello":
            return [self._welcome(msg)]
        if isinstance(msg, Auth) and self._state == "auth":
            return [self._verify(msg)]
        raise self._unexpected(msg)

    def _welcome(self, hello: Hello) -> Welcome:
        self._check_peer(hello.node, hello.nonce)
        common = set(hello.versions) & set(self._versions)
        if not common:
            offered = hello.versions[:8]
            text = f"no common protocol version: peer offers {offered}, we speak {self._versions}"
            raise self._fail("version", text)
        self.version = max(common)
        self._state = "auth"
        return Welcome(self.version, self._node, self._nonce)

    def _verify(self, auth: Auth) -> AuthOk:
        # Without a secret there is nothing to check: this listener accepts anyone, and a
        # dialer with a secret refuses our empty proof in AuthOk.
        if self._secret is not None and not hmac.compare_digest(
            auth.proof, self._expected(_DIALER_LABEL)
        ):
            detail = f"dialer {self.peer_node!r} did not prove the shared secret"
            raise self._fail("auth", "authentication failed", detail)
        self._state = "done"
        return AuthOk(self._expected(_LISTENER_LABEL))

    def _expected(self, label: bytes) -> bytes:
        assert self.version is not None and self.peer_node is not None
        nonces = (self._peer_nonce, self._nonce)
        return _proof(self._secret, label, self.version, nonces, (self.peer_node, self._node))


class DialerHandshake(_Handshake):
    """The connecting side: sends Hello, answers Welcome with Auth, checks AuthOk's proof.

    Args:
        secret: the shared secret, or None to run without authentication.
        node: this node's name, 1-200 characters.
        nonce: 32 fresh random bytes for this connection.
        versions: protocol versions this side offers.
    """

    _role = "dialer"

    def start(self) -> list[object]:
        """Begin: return the Hello to send."""
        self._state = "welcome"
        return [Hello(self._versions, self._node, self._nonce)]

    def _receive(self, msg: object) -> list[object]:
        if isinstance(msg, Welcome) and self._state == "welcome":
            return [self._auth(msg)]
        if isinstance(msg, AuthOk) and self._state == "authok":
            return self._verify(msg)
        raise self._unexpected(msg)

    def _auth(self, welcome: Welcome) -> Auth:
        self._check_peer(welcome.node, welcome.nonce)
        if welcome.version not in self._versions:
            raise self._fail("version", f"listener chose version {welcome.version}, not offered")
        self.version = welcome.version
        self._state = "authok"
        # Without a secret the proof is empty; a listener that has one refuses it.
        return Auth(self._expected(_DIALER_LABEL))

    def _verify(self, ok: AuthOk) -> list[object]:
        # Without a secret the dialer cannot check a proof: it trusts any listener.
        if self._secret is not None and not hmac.compare_digest(
            ok.proof, self._expected(_LISTENER_LABEL)
        ):
            detail = f"listener {self.peer_node!r} did not prove the shared secret"
            raise self._fail("auth", "authentication failed", detail)
        self._state = "done"
        return []

    def _expected(self, label: bytes) -> bytes:
        assert self.version is not None and self.peer_node is not None
        nonces = (self._nonce, self._peer_nonce)
        return _proof(self._secret, label, self.version, nonces, (self._node, self.peer_node))
