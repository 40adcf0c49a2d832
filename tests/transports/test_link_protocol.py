"""The sans-IO link protocol, driven synchronously: bytes and "now" values in, no trio.

Two protocols are wired back to back through their codec connections, or one protocol
is fed frames built by hand; time is a plain float.
"""

from __future__ import annotations

import attrs
import pytest

from gotask._errors import (
    AuthenticationError,
    CallTimeout,
    ConnectionLost,
    InvalidMessage,
    RemoteProtocolError,
)
from gotask.runtime.message import Address, Envelope, ErrorReply, Reply, message
from gotask.transports._handshake import (
    NONCE_BYTES,
    DialerHandshake,
    Hello,
    ListenerHandshake,
    Ping,
    Pong,
    WireError,
)
from gotask.transports._link_protocol import (
    CallDone,
    HandshakeProtocol,
    InvalidReceived,
    LinkClosed,
    LinkOptions,
    LinkProtocol,
    failure_reason,
)
from gotask.transports._wire import Connection, encode, frame

OPTIONS = LinkOptions(heartbeat_s=5.0, idle_timeout_s=15.0, frame_timeout_s=30.0,
                      write_timeout_s=10.0, outbound_max=4, outbound_bytes_max=1000)
SECRET = b"link-protocol-test-secret"


@message("t.lp.echo")
@attrs.frozen
class Echo:
    n: int


@message("t.lp.strict")
@attrs.frozen
class Strict:
    n: int


def authenticated() -> Connection:
    conn = Connection()
    conn.mark_authenticated()
    return conn


def link(*, calls: bool = False, options: LinkOptions = OPTIONS, now: float = 0.0) -> LinkProtocol:
    return LinkProtocol(authenticated(), options, now=now, peer="node-b", calls=calls)


def decoded(data: bytes) -> list[object]:
    """The messages in `data`, as the peer's codec reads them."""
    conn = authenticated()
    conn.receive_data(data)
    return conn.next_events()


def envelope(corr: int = 7, msg: object = None) -> Envelope:
    return Envelope(Address("a", "echo"), Address("b", "caller"), corr, msg or Echo(1))


# -- handshake -----------------------------------------------------------------------------


def shake_pair(
    dialer_secret: bytes | None = SECRET, listener_secret: bytes | None = SECRET
) -> tuple[HandshakeProtocol, HandshakeProtocol]:
    dialer = HandshakeProtocol(
        Connection(), DialerHandshake(dialer_secret, "a", b"d" * NONCE_BYTES), now=100.0,
        timeout_s=5.0,
    )
    listener = HandshakeProtocol(
        Connection(), ListenerHandshake(listener_secret, "b", b"l" * NONCE_BYTES), now=100.0,
        timeout_s=5.0,
    )
    return dialer, listener


def test_handshake_runs_to_authenticated_connections_by_bytes_alone() -> None:
    dialer, listener = shake_pair()
    assert listener.start() == b""
    to_listener = dialer.start()
    to_dialer = listener.receive_data(to_listener)  # Welcome
    to_listener = dialer.receive_data(to_dialer)  # Auth
    to_dialer = listener.receive_data(to_listener)  # AuthOk
    assert listener.done and not dialer.done
    assert dialer.receive_data(to_dialer) == b""
    assert dialer.done and dialer.conn.authenticated and listener.conn.authenticated
    assert (dialer.peer_node, listener.peer_node) == ("b", "a")
    assert dialer.due_at == listener.due_at == 105.0


def test_handshake_fed_one_byte_at_a_time() -> None:
    dialer, listener = shake_pair()
    listener.start()
    pending = dialer.start()
    for _ in range(4):
        out = b"".join(listener.receive_data(pending[i : i + 1]) for i in range(len(pending)))
        dialer, listener = listener, dialer
        pending = out
    assert dialer.done and listener.done


def test_handshake_keeps_bytes_that_follow_it_for_the_link() -> None:
    dialer, listener = shake_pair()
    listener.start()
    to_dialer = listener.receive_data(dialer.start())
    to_dialer = listener.receive_data(dialer.receive_data(to_dialer))
    to_dialer += listener.conn.send(envelope())
    assert dialer.receive_data(to_dialer) == b"" and dialer.done
    assert dialer.conn.next_events() == [envelope()]


def test_handshake_wrong_secret_gives_the_auth_error_frame() -> None:
    dialer, listener = shake_pair(listener_secret=b"another-secret-entirely")
    listener.start()
    to_listener = dialer.receive_data(listener.receive_data(dialer.start()))
    with pytest.raises(AuthenticationError) as info:
        listener.receive_data(to_listener)
    error = listener.failure_frame(info.value)
    assert error is not None and (error.code, error.fatal) == ("auth", True)


def test_handshake_failure_frames_for_timeout_garbage_and_eof() -> None:
    _, listener = shake_pair()
    listener.start()
    assert listener.failure_frame(None) == WireError("handshake", "handshake timed out", True)
    assert "5s" in str(listener.timeout_error())
    with pytest.raises(RemoteProtocolError, match="closed the connection during"):
        listener.receive_data(b"")
    _, listener = shake_pair()
    listener.start()
    with pytest.raises(InvalidMessage) as info:
        listener.receive_data(frame(b"\xc1"))  # not msgpack
    error = listener.failure_frame(info.value)
    assert error is not None and error.code == "invalid" and error.fatal


# -- outbound ------------------------------------------------------------------------------


def test_outbound_is_bounded_by_count_and_taken_in_one_write() -> None:
    proto = link()
    frames = [proto.encode(envelope(n)) for n in range(1, 5)]
    for data in frames:
        assert proto.has_room(len(data))
        proto.push(data)
    assert not proto.has_room(1)  # outbound_max frames queued
    assert proto.take_outbound() == b"".join(frames)
    assert proto.out == [] and proto.out_bytes == 0 and proto.take_outbound() == b""


def test_outbound_bytes_bound_admits_one_big_frame_into_an_empty_buffer() -> None:
    proto = link()
    assert proto.has_room(5000)
    proto.push(b"x" * 5000)
    assert not proto.has_room(1)


def test_control_frames_are_dropped_when_the_buffer_is_full() -> None:
    proto = link()
    for n in range(1, 5):
        proto.push(proto.encode(envelope(n)))
    assert proto.send_control(Pong(1)) is False
    assert len(proto.out) == 4
    proto.take_outbound()
    assert proto.send_control(Pong(2)) is True
    assert decoded(proto.take_outbound()) == [Pong(2)]


def test_fatal_error_goes_ahead_of_the_limits() -> None:
    proto = link()
    for n in range(1, 5):
        proto.push(proto.encode(envelope(n)))
    proto.queue_fatal(WireError("framing", "bad", fatal=True))
    assert decoded(proto.take_outbound())[-1] == WireError("framing", "bad", True)


# -- inbound -------------------------------------------------------------------------------


def test_envelopes_and_replies_pass_through_untouched() -> None:
    proto = link()
    env, reply = envelope(), Reply("b", 3, Echo(2))
    proto.receive_data(frame(encode(env)) + frame(encode(reply)))
    assert proto.next_events() == [env, reply]
    assert proto.next_events() == []


def test_ping_is_answered_and_pong_swallowed() -> None:
    proto = link()
    proto.receive_data(frame(encode(Ping(9))) + frame(encode(Pong(4))) + frame(encode(envelope())))
    assert proto.next_events() == [envelope()]
    assert decoded(proto.take_outbound()) == [Pong(9)]


def test_a_batch_of_control_frames_only_still_reaches_need_data_or_eof() -> None:
    proto = link()
    proto.receive_data(frame(encode(Ping(1))))
    proto.receive_data(b"")
    with pytest.raises(LinkClosed, match="peer closed the connection"):
        proto.next_events()
    assert decoded(proto.take_outbound()) == [Pong(1)]


def test_unexpected_control_frame_gets_a_non_fatal_error() -> None:
    proto = link()
    proto.receive_data(frame(encode(Hello((1,), "x", b"n" * NONCE_BYTES))))
    assert proto.next_events() == []
    [error] = decoded(proto.take_outbound())
    assert error == WireError("invalid", "unexpected Hello after the handshake", False)


def test_a_non_fatal_error_from_the_peer_is_shown_and_the_link_stays_up() -> None:
    proto = link()
    report = WireError("invalid", "what was that", fatal=False)
    proto.receive_data(frame(encode(report)) + frame(encode(envelope())))
    assert proto.next_events() == [report, envelope()]
    assert proto.out == [] and proto.close_reason is None


def test_invalid_envelope_gets_an_error_frame_and_its_caller_an_error_reply() -> None:
    proto = link()
    bad = encode(envelope(corr=11, msg=Strict(1))).replace(b"t.lp.strict", b"t.lp.nope!!")
    proto.receive_data(frame(bad) + frame(encode(envelope())))
    first, second = proto.next_events()
    assert isinstance(first, InvalidReceived) and second == envelope()
    assert first.reply is not None and (first.reply.dst_node, first.reply.corr) == ("b", 11)
    assert isinstance(first.reply.msg, ErrorReply)
    assert first.reply.msg.type_name == "InvalidMessage"
    [error] = decoded(proto.take_outbound())
    assert isinstance(error, WireError) and error.code == "invalid" and not error.fatal


def test_broken_framing_closes_after_the_good_frames_with_a_fatal_frame_queued() -> None:
    proto = link()
    proto.receive_data(frame(encode(envelope())) + b"\x00\x00\x00\x00")
    assert proto.next_events() == [envelope()]
    with pytest.raises(LinkClosed, match="framing error") as info:
        proto.next_events()
    assert info.value.flush
    [error] = decoded(proto.take_outbound())
    assert isinstance(error, WireError) and error.code == "framing" and error.fatal


def test_fatal_error_from_the_peer_closes_after_the_events_before_it() -> None:
    proto = link()
    fatal = WireError("framing", "you broke it", fatal=True)
    proto.receive_data(frame(encode(envelope())) + frame(encode(fatal)) + frame(encode(Ping(1))))
    assert proto.next_events() == [envelope(), fatal]
    with pytest.raises(LinkClosed, match="fatal error: framing: you broke it"):
        proto.next_events()


# -- deadlines -----------------------------------------------------------------------------


def test_heartbeat_is_due_after_heartbeat_s_without_sending() -> None:
    proto = link(now=100.0)
    assert proto.next_due(100.0) == 105.0
    assert proto.tick(104.9) == [] and proto.out == []
    proto.tick(105.0)
    assert decoded(proto.take_outbound()) == [Ping(1)]
    assert proto.next_due(105.0) == 110.0
    proto.write_finished(107.0)  # something was sent: the next ping waits for silence
    assert proto.next_due(107.0) == 112.0


def test_silence_while_waiting_for_data_closes() -> None:
    proto = link(now=0.0)
    proto.wait_reading(1.0)
    assert proto.read_deadline_s == 16.0
    with pytest.raises(LinkClosed, match="nothing received for 15s"):
        proto.tick(16.0)


def test_data_received_stops_the_read_deadline() -> None:
    proto = link(now=0.0)
    proto.wait_reading(1.0)
    proto.receive_data(frame(encode(envelope())))
    proto.tick(100.0)  # delivering may take long: no read deadline runs meanwhile
    assert proto.next_events() == [envelope()]


def test_an_incomplete_frame_must_complete_within_frame_timeout() -> None:
    proto = link(now=0.0)
    data = frame(encode(envelope()))
    proto.wait_reading(0.0)
    proto.receive_data(data[:5])
    assert proto.next_events() == []
    proto.wait_reading(2.0)
    assert proto.read_deadline_s == 32.0
    proto.receive_data(data[5:6])  # a slow drip does not move the deadline
    proto.next_events()
    proto.wait_reading(20.0)
    assert proto.read_deadline_s == 32.0
    with pytest.raises(LinkClosed, match="frame still incomplete after 30s"):
        proto.tick(32.0)


def test_a_stalled_write_closes() -> None:
    proto = link(now=0.0)
    proto.write_started(3.0)
    assert proto.next_due(3.0) == 5.0  # the heartbeat comes first
    with pytest.raises(LinkClosed, match="write stalled for 10s"):
        proto.tick(13.0)


def test_next_due_never_lies_beyond_the_shortest_timeout() -> None:
    proto = link(options=LinkOptions(heartbeat_s=60.0, idle_timeout_s=200.0,
                                     frame_timeout_s=30.0, write_timeout_s=12.0))
    assert proto.next_due(0.0) == 12.0


# -- calls ---------------------------------------------------------------------------------


def test_a_call_gets_its_reply_once_and_late_replies_are_dropped() -> None:
    proto = link(calls=True)
    proto.start_call(5, 0.0, 2.0, "Echo")
    answers = [Reply("a", 5, Echo(3)), Reply("a", 5, Echo(4))]
    proto.receive_data(b"".join(frame(encode(answer)) for answer in answers))
    assert proto.next_events() == [CallDone(5, Echo(3))]


def test_a_call_times_out_at_its_due_time() -> None:
    proto = link(calls=True, now=10.0)
    assert proto.start_call(5, 10.0, 2.0, "Echo") == 12.0
    assert proto.next_due(10.0) == 12.0
    assert proto.tick(11.9) == []
    [done] = proto.tick(12.0)
    assert done.corr == 5 and isinstance(done.error, CallTimeout)
    assert str(done.error) == "no reply from node-b within 2s to Echo"
    proto.receive_data(frame(encode(Reply("a", 5, Echo(3)))))
    assert proto.next_events() == []  # too late


def test_a_forgotten_call_neither_times_out_nor_takes_its_reply() -> None:
    proto = link(calls=True)
    proto.start_call(5, 0.0, 2.0, "Echo")
    proto.forget_call(5)
    assert proto.next_due(0.0) == 5.0  # the heartbeat's, not the call's
    assert proto.tick(3.0) == []


def test_closing_fails_every_call_left_with_connection_lost() -> None:
    proto = link(calls=True)
    proto.start_call(1, 0.0, 2.0, "Echo")
    proto.start_call(2, 0.0, 2.0, "Echo")
    done = proto.close("gone")
    assert [d.corr for d in done] == [1, 2]
    assert all(isinstance(d.error, ConnectionLost) and "gone" in str(d.error) for d in done)
    assert proto.close("again") == [] and proto.close_reason == "gone"
    assert proto.send_control(Ping(1)) is False


def test_an_invalid_answer_to_a_call_fails_that_call() -> None:
    proto = link(calls=True)
    proto.start_call(11, 0.0, 2.0, "Echo")
    bad = encode(envelope(corr=11, msg=Strict(1))).replace(b"t.lp.strict", b"t.lp.nope!!")
    proto.receive_data(frame(bad))
    [done] = proto.next_events()
    assert isinstance(done, CallDone) and isinstance(done.error, RemoteProtocolError)


def test_refuse_answers_calls_only() -> None:
    proto = link(calls=True)
    proto.refuse(envelope(corr=0), "ActorNotFound", "none here")
    assert proto.out == []
    proto.refuse(envelope(corr=4), "ActorNotFound", "none here")
    [reply] = decoded(proto.take_outbound())
    assert reply == Reply("b", 4, ErrorReply("ActorNotFound", "none here", ""))


def test_failure_reasons() -> None:
    streams = (OSError,)
    assert failure_reason(LinkClosed("why"), streams) == ("why", False)
    assert failure_reason(ConnectionResetError("reset"), streams) == (
        "connection lost: ConnectionResetError: reset", False)
    assert failure_reason(RemoteProtocolError("bad"), streams) == ("protocol error: bad", False)
    assert failure_reason(KeyError("x"), streams)[1] is True


# -- two protocols back to back ------------------------------------------------------------


def test_two_links_back_to_back_call_and_answer() -> None:
    client, node = link(calls=True), link()
    client.push(client.encode(envelope(corr=21)))
    client.start_call(21, 0.0, 5.0, "Echo")
    node.receive_data(client.take_outbound())
    [env] = node.next_events()
    assert isinstance(env, Envelope)
    node.push(node.encode(Reply("b", env.corr, Echo(2))))
    client.receive_data(node.take_outbound())
    assert client.next_events() == [CallDone(21, Echo(2))]
