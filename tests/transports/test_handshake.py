"""The sans-IO handshake: versions, node names and mutual HMAC authentication."""

from __future__ import annotations

import hashlib
import hmac

import attrs
import pytest

from gotask._errors import (
    AuthenticationError,
    FramingError,
    InvalidMessage,
    LocalProtocolError,
)
from gotask.transports._handshake import (
    PROTOCOL_VERSION,
    Auth,
    AuthOk,
    DialerHandshake,
    Hello,
    ListenerHandshake,
    Ping,
    Welcome,
    WireError,
    wire_error,
)
from gotask.transports._wire import NEED_DATA, Connection

V = PROTOCOL_VERSION
SECRET = b"correct horse battery staple"
OTHER = b"wrong secret entirely"


def nonce(byte: int) -> bytes:
    return bytes([byte]) * 32


def dialer(secret: bytes | None = SECRET, **kwargs: object) -> DialerHandshake:
    return DialerHandshake(secret, "worker-1", nonce(1), **kwargs)  # type: ignore[arg-type]


def listener(secret: bytes | None = SECRET, **kwargs: object) -> ListenerHandshake:
    return ListenerHandshake(secret, "owner", nonce(2), **kwargs)  # type: ignore[arg-type]


def over_the_wire(msg: object) -> object:
    """Send one message through a pre-auth connection, as the transport would."""
    conn = Connection()
    conn.receive_data(conn.send(msg))
    event = conn.next_event()
    assert conn.next_event() is NEED_DATA
    return event


def run(d: DialerHandshake, lis: ListenerHandshake) -> None:
    """Drive both sides until nothing is left to send; exceptions propagate."""
    lis.start()
    to_listener = d.start()
    while to_listener:
        replies = lis.receive(over_the_wire(to_listener.pop(0)))
        for reply in replies:
            to_listener += d.receive(over_the_wire(reply))


def test_same_secret_authenticates_both_sides() -> None:
    d, lis = dialer(), listener()
    run(d, lis)
    assert d.done and lis.done
    assert (d.peer_node, lis.peer_node) == ("owner", "worker-1")
    assert d.version == lis.version == V


def test_no_secret_on_either_side_is_accepted() -> None:
    d, lis = dialer(None), listener(None)
    run(d, lis)
    assert d.done and lis.done


def test_proofs_are_hmac_sha256_over_both_nonces_and_names() -> None:
    d, lis = dialer(), listener()
    (hello,) = d.start()
    lis.start()
    (welcome,) = lis.receive(hello)
    assert welcome == Welcome(V, "owner", nonce(2))
    (auth,) = d.receive(welcome)
    assert isinstance(auth, Auth)
    names = b"\x00\x08worker-1" + b"\x00\x05owner"
    data = b"gotask-dialer" + V.to_bytes(4, "big") + nonce(1) + nonce(2) + names
    assert auth.proof == hmac.new(SECRET, data, hashlib.sha256).digest()
    (ok,) = lis.receive(auth)
    assert isinstance(ok, AuthOk)
    data = b"gotask-listener" + data[len(b"gotask-dialer") :]
    assert ok.proof == hmac.new(SECRET, data, hashlib.sha256).digest()
    assert d.receive(ok) == []
    assert d.done and lis.done


def test_welcome_carries_no_proof_and_does_not_depend_on_the_secret() -> None:
    # What an unauthenticated dialer gets to see is the same whatever the secret: there
    # is nothing in it to brute-force the secret from offline.
    assert [field.name for field in attrs.fields(Welcome)] == ["version", "node", "nonce"]
    welcomes = []
    for secret in (SECRET, OTHER, None):
        lis = listener(secret)
        lis.start()
        welcomes += lis.receive(Hello((V,), "worker-1", nonce(1)))
    assert welcomes == [Welcome(V, "owner", nonce(2))] * 3


def test_wrong_secret_is_refused_by_the_listener_before_it_proves_anything() -> None:
    d, lis = dialer(OTHER), listener()
    lis.start()
    (hello,) = d.start()
    sent_by_listener = lis.receive(over_the_wire(hello))
    (auth,) = d.receive(over_the_wire(sent_by_listener[0]))
    with pytest.raises(AuthenticationError, match="dialer 'worker-1' did not prove"):
        lis.receive(over_the_wire(auth))
    # The listener's whole side of the exchange: a Welcome without proof, then the error.
    assert sent_by_listener == [Welcome(V, "owner", nonce(2))]
    assert lis.error_reply == WireError("auth", "authentication failed", True)
    assert d.error_reply is None
    assert not d.done and not lis.done
    with pytest.raises(AuthenticationError, match="refused the handshake: auth"):
        d.receive(lis.error_reply)
    with pytest.raises(LocalProtocolError, match="failed"):
        lis.receive(auth)


def test_listener_checks_the_proof_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    from gotask.transports import _handshake

    compared: list[tuple[bytes, bytes]] = []
    real_compare_digest = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(_handshake.hmac, "compare_digest", compare_digest)
    d, lis = dialer(), listener()
    lis.start()
    (hello,) = d.start()
    (auth,) = d.receive(lis.receive(hello)[0])
    compared.clear()
    (ok,) = lis.receive(auth)
    assert compared and compared[-1][0] == auth.proof  # the listener's check of Auth
    compared.clear()
    d.receive(ok)
    assert compared and compared[-1][0] == ok.proof  # the dialer's check of AuthOk


def test_dialer_without_secret_is_refused_by_listener_with_one() -> None:
    d, lis = dialer(None), listener()
    with pytest.raises(AuthenticationError, match="did not prove"):
        run(d, lis)
    assert lis.error_reply == WireError("auth", "authentication failed", True)
    with pytest.raises(AuthenticationError, match="auth: authentication failed"):
        d.receive(lis.error_reply)


def test_listener_without_secret_is_refused_by_dialer_with_one() -> None:
    d, lis = dialer(), listener(None)
    with pytest.raises(AuthenticationError, match="listener 'owner' did not prove"):
        run(d, lis)
    assert d.error_reply is not None and d.error_reply.code == "auth"
    # The listener checks nothing without a secret; the dialer's error frame closes it.
    assert lis.done and not d.done


def test_version_mismatch() -> None:
    d, lis = dialer(versions=(V + 1, V + 2)), listener()
    with pytest.raises(AuthenticationError, match="no common protocol version"):
        run(d, lis)
    assert lis.error_reply is not None
    assert (lis.error_reply.code, lis.error_reply.fatal) == ("version", True)
    with pytest.raises(AuthenticationError, match="version"):
        d.receive(lis.error_reply)


def test_listener_picks_the_highest_common_version() -> None:
    d, lis = dialer(versions=(1, 2, 3)), listener(versions=(1, 2))
    run(d, lis)
    assert d.version == lis.version == 2


def test_dialer_rejects_a_version_it_did_not_offer() -> None:
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="version 7"):
        d.receive(Welcome(7, "owner", nonce(2)))


@pytest.mark.parametrize("bad", [b"", b"\x01" * 16, b"\x01" * 33])
def test_listener_rejects_a_bad_nonce(bad: bytes) -> None:
    lis = listener()
    lis.start()
    with pytest.raises(AuthenticationError, match="32 bytes"):
        lis.receive(Hello((V,), "worker-1", bad))
    assert lis.error_reply is not None and lis.error_reply.code == "handshake"


def test_dialer_rejects_a_short_nonce() -> None:
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="32 bytes"):
        d.receive(Welcome(V, "owner", b"\x02" * 8))


def test_listener_rejects_its_own_nonce_replayed() -> None:
    lis = listener()
    lis.start()
    with pytest.raises(AuthenticationError, match="replayed our own nonce"):
        lis.receive(Hello((V,), "worker-1", nonce(2)))


def test_dialer_rejects_its_own_nonce_replayed() -> None:
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="replayed our own nonce"):
        d.receive(Welcome(V, "owner", nonce(1)))


def test_replayed_auth_from_another_connection_is_refused() -> None:
    d, lis = dialer(), listener()
    (hello,) = d.start()
    lis.start()
    (auth,) = d.receive(lis.receive(hello)[0])
    # An eavesdropper replays the whole dialer side to a listener with a fresh nonce.
    fresh = ListenerHandshake(SECRET, "owner", nonce(3))
    fresh.start()
    fresh.receive(hello)
    with pytest.raises(AuthenticationError, match="did not prove"):
        fresh.receive(auth)


def test_listener_proof_reflected_as_auth_is_refused() -> None:
    d, lis = dialer(), listener()
    (hello,) = d.start()
    lis.start()
    (auth,) = d.receive(lis.receive(hello)[0])
    (ok,) = lis.receive(auth)
    assert isinstance(ok, AuthOk)
    # The same connection parameters (nonces, names, version), the listener's proof
    # offered as the dialer's: the role label makes it worthless.
    again = listener()
    again.start()
    again.receive(hello)
    with pytest.raises(AuthenticationError, match="did not prove"):
        again.receive(Auth(ok.proof))


def test_dialer_proof_reflected_in_authok_is_refused() -> None:
    # A fake listener without the secret echoes the dialer's own proof back as its own.
    d = dialer()
    d.start()
    (auth,) = d.receive(Welcome(V, "owner", nonce(2)))
    assert isinstance(auth, Auth)
    with pytest.raises(AuthenticationError, match="listener 'owner' did not prove"):
        d.receive(AuthOk(auth.proof))
    assert not d.done


@pytest.mark.parametrize(
    "proof",
    [
        b"",
        b"\x00" * 32,
        hmac.new(OTHER, b"anything", hashlib.sha256).digest(),
    ],
    ids=["empty", "zeros", "other-key"],
)
def test_dialer_rejects_an_impersonating_listener(proof: bytes) -> None:
    # An impersonator accepts any Auth; the dialer catches it at AuthOk.
    d = dialer()
    d.start()
    (auth,) = d.receive(Welcome(V, "owner", nonce(2)))
    assert isinstance(auth, Auth)
    with pytest.raises(AuthenticationError, match="listener 'owner' did not prove"):
        d.receive(AuthOk(proof))
    assert not d.done
    assert d.error_reply == WireError("auth", "authentication failed", True)
    with pytest.raises(LocalProtocolError, match="failed"):
        d.receive(AuthOk(proof))


def test_dialer_rejects_a_proof_from_another_connection() -> None:
    # The attacker relays a genuine listener's AuthOk made for another dialer nonce.
    other = DialerHandshake(SECRET, "worker-1", nonce(9))
    genuine = listener()
    genuine.start()
    (welcome,) = genuine.receive(other.start()[0])
    (ok,) = genuine.receive(other.receive(welcome)[0])
    assert isinstance(ok, AuthOk)
    d = dialer()
    d.start()
    d.receive(welcome)
    with pytest.raises(AuthenticationError, match="did not prove"):
        d.receive(ok)


def test_peer_node_name_is_checked() -> None:
    lis = listener()
    lis.start()
    with pytest.raises(AuthenticationError, match="node name"):
        lis.receive(Hello((V,), "", nonce(1)))
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="node name"):
        d.receive(Welcome(V, "x" * 201, nonce(2)))


def test_messages_out_of_order_fail_the_handshake() -> None:
    lis = listener()
    lis.start()
    with pytest.raises(AuthenticationError, match="unexpected Auth"):
        lis.receive(Auth(b""))
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="unexpected Ping"):
        d.receive(Ping(1))
    with pytest.raises(LocalProtocolError, match="failed"):
        d.receive(AuthOk(b""))
    d = dialer()
    d.start()
    with pytest.raises(AuthenticationError, match="unexpected AuthOk"):
        d.receive(AuthOk(b"x" * 32))  # AuthOk before Welcome
    lis = listener()
    lis.start()
    lis.receive(Hello((V,), "worker-1", nonce(1)))
    with pytest.raises(AuthenticationError, match="unexpected Hello"):
        lis.receive(Hello((V,), "worker-1", nonce(1)))


def test_receive_before_start_or_after_done_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="start"):
        listener().receive(Hello((V,), "worker-1", nonce(1)))
    d, lis = dialer(), listener()
    run(d, lis)
    with pytest.raises(LocalProtocolError, match="done"):
        d.receive(AuthOk(b""))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((b"", "n", nonce(1)), "secret"),
        ((SECRET, "", nonce(1)), "node name"),
        ((SECRET, "n" * 201, nonce(1)), "node name"),
        ((SECRET, "n", b"short"), "nonce"),
    ],
)
def test_local_arguments_are_checked(args: tuple[bytes, str, bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DialerHandshake(*args)
    with pytest.raises(ValueError, match=match):
        ListenerHandshake(*args)
    with pytest.raises(ValueError, match="versions"):
        ListenerHandshake(SECRET, "n", nonce(1), versions=())


def test_secret_never_leaks() -> None:
    leaks = [SECRET.decode(), SECRET.hex(), repr(SECRET)]
    texts = []
    for d, lis in [
        (dialer(OTHER), listener()),
        (dialer(None), listener()),
        (dialer(), listener(None)),
    ]:
        try:
            run(d, lis)
        except AuthenticationError as exc:
            texts.append(str(exc))
        texts += [repr(d), repr(lis), repr(d.error_reply), repr(lis.error_reply)]
    assert "secret=set" in repr(listener())
    assert not [text for text in texts for leak in leaks if leak in text]


def test_after_the_handshake_the_full_frame_limit_applies() -> None:
    conn = Connection()
    big = Ping(1), WireError("x", "y" * 20_000, False)
    with pytest.raises(LocalProtocolError):
        conn.send_many(big)
    conn.mark_authenticated()
    conn.receive_data(conn.send_many(big))
    assert [conn.next_event(), conn.next_event()] == list(big)


def test_wire_error_for_each_protocol_error() -> None:
    assert wire_error(FramingError("bad")) == WireError("framing", "bad", True)
    assert wire_error(InvalidMessage("odd")) == WireError("invalid", "odd", False)
    assert wire_error(AuthenticationError("no")).fatal
