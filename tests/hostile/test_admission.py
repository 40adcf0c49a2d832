"""Issue 22, item 1 of the hostile test: a pre-auth lockout.

64 silent TCP connections filled the single pre-auth gate (`unauthenticated_max`, per
listener); every new connection was then closed at once, so re-connecting attackers kept
every legitimate client out, and wrong-secret attempts held a slot for the failure delay.
Now the oldest idle connection is evicted to admit a new one, a silent connection is cut
after `first_byte_timeout_s`, one host holds at most `unauthenticated_per_source_max`
slots, a failing proof waits for its answer without a slot, and shedding is logged with
counts.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio

from gotask._errors import AuthenticationError
from gotask.runtime import Address, open_node
from gotask.transports import LinkOptions, connect_tcp, serve_tcp
from gotask.transports._admission import HandshakeGate
from gotask.transports._wire import CLOSED

from ..transports.conformance import Ping, Pong, echo

SECRET = b"admission-test-secret"


async def test_silent_reconnecting_flood_does_not_lock_out_a_client(
    raw_peer: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    options = LinkOptions(unauthenticated_max=64, handshake_timeout_s=5.0)
    async with open_node("srv") as srv, trio.open_nursery() as nursery:
        await srv.start_actor("echo", echo)
        port = await srv.nursery.start(partial(serve_tcp, srv, "127.0.0.1", 0,
                                               secret=SECRET, options=options))

        async def hold_one() -> None:  # a silent connection, re-opened whenever closed
            while True:
                peer = await raw_peer.connect(port)
                with trio.move_on_after(10):
                    await peer.receive(timeout_s=10)
                await peer.aclose()

        for _ in range(64):
            nursery.start_soon(hold_one)
        await trio.sleep(0.3)
        ok = 0
        for n in range(10):
            async with open_node(f"good{n}") as good:
                with caplog.at_level(logging.WARNING, logger="gotask.transport"):
                    await connect_tcp(good, "127.0.0.1", port, secret=SECRET, options=options)
                assert await good.call(Address("srv", "echo"), Ping(n), timeout_s=5) == Pong(n)
                ok += 1
        assert ok == 10
        assert any("admission shedding" in r.getMessage() and "evicted" in r.getMessage()
                   for r in caplog.records)
        nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_cut_at_the_first_byte_deadline(raw_peer: Any) -> None:
    options = LinkOptions(first_byte_timeout_s=0.3, handshake_timeout_s=5.0)
    async with open_node("srv") as srv:
        port = await srv.nursery.start(partial(serve_tcp, srv, "127.0.0.1", 0,
                                               secret=SECRET, options=options))
        peer = await raw_peer.connect(port)
        started = trio.current_time()
        while (await peer.receive(timeout_s=3)) is not CLOSED:
            pass
        assert 0.25 < trio.current_time() - started < 2.0


async def test_a_failed_proof_waits_for_its_answer_without_a_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two wrong-secret dialers wait out a long failure delay on a listener with two
    # slots; a good dialer still gets in with nothing evicted, and the wrong ones still
    # get their refusal.
    options = LinkOptions(unauthenticated_max=2, auth_failure_delay_s=1.0)
    async with open_node("srv") as srv, trio.open_nursery() as nursery:
        await srv.start_actor("echo", echo)
        port = await srv.nursery.start(partial(serve_tcp, srv, "127.0.0.1", 0,
                                               secret=SECRET, options=options))
        refused: list[str] = []

        async def wrong(n: int) -> None:
            async with open_node(f"wrong{n}") as bad:
                with pytest.raises(AuthenticationError):
                    await connect_tcp(bad, "127.0.0.1", port, secret=b"w" * 20, options=options)
                refused.append(bad.name)

        with caplog.at_level(logging.WARNING, logger="gotask.transport"):
            nursery.start_soon(wrong, 1)
            nursery.start_soon(wrong, 2)
            await trio.sleep(0.3)
            async with open_node("good") as good:
                await connect_tcp(good, "127.0.0.1", port, secret=SECRET, options=options)
                assert await good.call(Address("srv", "echo"), Ping(1), timeout_s=5) == Pong(1)
        assert not any("admission shedding" in r.getMessage() for r in caplog.records)
        with trio.fail_after(3):
            while len(refused) < 2:
                await trio.sleep(0.05)


def test_gate_per_source_cap_evicts_that_sources_oldest_idle_first() -> None:
    cancelled: list[str] = []
    gate = HandshakeGate(limit=10, per_source_max=2)
    a1 = gate.try_enter("a", 1.0, lambda: cancelled.append("a1"))
    a2 = gate.try_enter("a", 2.0, lambda: cancelled.append("a2"))
    b1 = gate.try_enter("b", 3.0, lambda: cancelled.append("b1"))
    assert a1 and a2 and b1
    gate.first_byte(a1)
    a3 = gate.try_enter("a", 4.0, lambda: cancelled.append("a3"))
    assert a3 is not None and cancelled == ["a2"]  # a1 is busy: the idle a2 goes
    gate.first_byte(a3)
    assert gate.try_enter("a", 5.0, lambda: None) is None  # a's two slots are busy
    assert [s.source for s in gate.slots] == ["a", "b", "a"]
    line = gate.shed_report(5.0)
    assert line is not None and "1 refused, 1 evicted" in line and "3/10" in line
    assert gate.shed_report(6.0) is None  # nothing new, and reported lately


def test_gate_full_evicts_the_oldest_idle_then_the_oldest() -> None:
    cancelled: list[int] = []
    gate = HandshakeGate(limit=2, per_source_max=2)
    s1 = gate.try_enter("x", 1.0, lambda: cancelled.append(1))
    s2 = gate.try_enter("y", 2.0, lambda: cancelled.append(2))
    assert s1 and s2
    gate.first_byte(s1)
    assert gate.try_enter("z", 3.0, lambda: cancelled.append(3)) is not None
    assert cancelled == [2]
    gate.leave(s2)  # an evicted slot given back again is a no-op
    assert gate.active == 2
