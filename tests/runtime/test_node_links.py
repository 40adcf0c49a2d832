"""The node and its links: lost connections, the reader's fast path, call deadlines."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gotask._errors import ActorNotFound, CallTimeout, RemoteActorError, RemoteProtocolError
from gotask.runtime import ActorContext, Address, message, open_node
from gotask.runtime.message import Command, Envelope, ErrorReply, Reply, reply_type
from gotask.runtime.node import Node
from gotask.transports import LinkOptions
from gotask.transports.memory import MemoryNetwork


@message("t.nl.ping")
@attrs.frozen
class Ping:
    n: int


@message("t.nl.pong")
@attrs.frozen
class Pong:
    n: int


async def echo(ctx: ActorContext, *, task_status: Any) -> None:
    task_status.started()
    while True:
        for env in await ctx.receive_batch():
            await ctx.reply(env, Pong(env.msg.n))


async def stuck(ctx: ActorContext, *, task_status: Any) -> None:
    """Never takes anything out of its inbox."""
    task_status.started()
    await trio.sleep_forever()


async def silent(ctx: ActorContext, *, task_status: Any) -> None:
    """Takes requests and never answers."""
    task_status.started()
    while True:
        await ctx.receive_batch()


#: One frame in the outbound buffer, one chunk in the pipe: the way to b fills at once.
TIGHT = LinkOptions(outbound_max=1)


async def fill_the_way(a: Node, dst: Address) -> int:
    """Send to `dst` (whose actor never reads) until `send_nowait` meets a full way."""
    sent = 0
    while True:
        try:
            a.send_nowait(dst, Ping(sent))
        except trio.WouldBlock:
            return sent
        sent += 1
        await trio.testing.wait_all_tasks_blocked()


class FakeLink:
    """A link whose connection broke but which the node still routes through."""

    peer = "b"

    def send_nowait(self, item: Envelope | Reply) -> None:
        raise trio.BrokenResourceError("gone")

    async def send(self, item: Envelope | Reply) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.ClosedResourceError("gone")


class RecordingLink:
    """A link to "b" that records what it is given, or is full."""

    peer = "b"

    def __init__(self) -> None:
        self.sent: list[Envelope | Reply] = []
        self.full = False

    def send_nowait(self, item: Envelope | Reply) -> None:
        if self.full:
            raise trio.WouldBlock
        self.sent.append(item)

    async def send(self, item: Envelope | Reply) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(item)


# -- a link lost under a sender ----------------------------------------------------------


@pytest.mark.parametrize("how", ["send", "call"])
async def test_sender_waiting_for_room_gets_actor_not_found_when_the_link_closes(
    autojump_clock: Any, how: str
) -> None:
    net = MemoryNetwork(chunks_max=1)
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b, options=TIGHT)
        link = await net.connect(a, "b", options=TIGHT)
        dst = await b.start_actor("stuck", stuck, inbox_max=1)
        assert await fill_the_way(a, dst) > 0
        errors: list[BaseException] = []

        async def blocked_sender() -> None:
            try:
                if how == "send":
                    await a.send(dst, Ping(-1))
                else:
                    await a.call(dst, Ping(-1), timeout_s=60)
            except Exception as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert errors == []  # it is waiting for room
            started = trio.current_time()
            link.close("test")
        assert trio.current_time() == started  # at once, not at a timeout
        assert len(errors) == 1
        assert isinstance(errors[0], ActorNotFound)
        assert str(errors[0]) == "connection to node 'b' lost"
        assert a._pending == {}


async def test_a_broken_link_still_attached_is_actor_not_found() -> None:
    async with open_node("a") as a:
        a.attach_link(FakeLink())
        dst = Address("b", "x")
        with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
            a.send_nowait(dst, Ping(1))
        with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
            await a.send(dst, Ping(1))
        with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
            await a.call(dst, Ping(1), timeout_s=1)
        with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
            await a.reply(Envelope(Address("a", "x"), dst, 5, Ping(1)), Pong(1))
        assert a._pending == {}


async def test_waiting_call_fails_at_once_when_its_link_is_lost(autojump_clock: Any) -> None:
    net = MemoryNetwork()
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b)
        link = await net.connect(a, "b")
        dst = await b.start_actor("silent", silent)
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + 5

            async def close_later() -> None:
                await trio.sleep(1)
                link.close("test")

            nursery.start_soon(close_later)
            with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
                await a.call(dst, Ping(1), timeout_s=60)
            assert trio.current_time() == pytest.approx(1)
        assert a._pending == {}


# -- the reader's fast path ---------------------------------------------------------------


async def test_deliver_nowait_raises_would_block_on_a_full_inbox_and_delivers_nothing() -> None:
    async with open_node("a") as a:
        receive = a.open_inbox("box", inbox_max=1)
        env = Envelope(Address("a", "box"), None, 0, Ping(1))
        a.deliver_nowait(env)
        with pytest.raises(trio.WouldBlock):
            a.deliver_nowait(Envelope(Address("a", "box"), None, 0, Ping(2)))
        assert receive.receive_nowait() is env
        with pytest.raises(trio.WouldBlock):
            receive.receive_nowait()


async def test_deliver_nowait_answers_a_request_for_a_missing_actor(caplog: Any) -> None:
    async with open_node("a") as a:
        link = RecordingLink()
        a.attach_link(link)
        request = Envelope(Address("a", "nobody"), Address("b", "$call"), 7, Ping(1))
        # The way back is full: nothing is done, the reader will `await deliver`.
        link.full = True
        with pytest.raises(trio.WouldBlock):
            a.deliver_nowait(request)
        assert link.sent == []
        link.full = False
        a.deliver_nowait(request)
        (reply,) = link.sent
        assert isinstance(reply, Reply) and (reply.dst_node, reply.corr) == ("b", 7)
        assert isinstance(reply.msg, ErrorReply) and reply.msg.type_name == "ActorNotFound"
        assert reply.msg.message == "no actor 'nobody' on node 'a'"
        # A plain message for nobody is logged and dropped.
        with caplog.at_level(logging.WARNING, logger="gotask.runtime"):
            a.deliver_nowait(Envelope(Address("a", "nobody"), None, 0, Ping(2)))
        assert "dropped Envelope for nobody@a" in caplog.text
        assert len(link.sent) == 1
        # An envelope for another node is relayed.
        relayed = Envelope(Address("b", "x"), None, 0, Ping(3))
        a.deliver_nowait(relayed)
        assert link.sent[-1] is relayed


async def test_deliver_nowait_routes_the_error_for_a_remote_caller(autojump_clock: Any) -> None:
    net = MemoryNetwork()
    async with open_node("a") as a, open_node("b") as b:
        await net.serve(b)
        await net.connect(a, "b")
        # What b's reader does with a's request for an actor b does not have.
        with pytest.raises(RemoteActorError) as info:
            await a.call(Address("b", "nobody"), Ping(1), timeout_s=5)
        assert info.value.type_name == "ActorNotFound"
        assert info.value.message == "no actor 'nobody' on node 'b'"
        # And when the way back is unknown, deliver_nowait says so.
        with pytest.raises(ActorNotFound, match="node 'z' is not connected"):
            b.deliver_nowait(Envelope(Address("b", "nobody"), Address("z", "$call"), 3, Ping(1)))
        # A reply for a call nobody waits for any more is dropped quietly.
        b.deliver_nowait(Reply("b", 12345, Pong(1)))
        b.deliver_nowait(Reply("b", 12345, ErrorReply("X", "y", "")))


# -- call deadlines -----------------------------------------------------------------------


async def test_calls_with_different_timeouts_each_time_out_on_their_own(
    autojump_clock: Any,
) -> None:
    async with open_node("a") as a:
        dst = await a.start_actor("silent", silent)
        timed_out: dict[float, float] = {}

        async def call(timeout_s: float) -> None:
            started = trio.current_time()
            with pytest.raises(CallTimeout, match=f"within {timeout_s:g}s to Ping"):
                await a.call(dst, Ping(1), timeout_s=timeout_s)
            timed_out[timeout_s] = trio.current_time() - started

        async with trio.open_nursery() as nursery:
            # Longest first: each later call needs an earlier wake-up of the timer.
            for timeout_s in (30.0, 10.0, 20.0, 0.5, 5.0):
                nursery.start_soon(call, timeout_s)
        assert timed_out == pytest.approx({t: t for t in (30.0, 10.0, 20.0, 0.5, 5.0)})
        assert a._pending == {}


async def test_a_reply_just_before_the_deadline_wins_and_nothing_is_left(
    autojump_clock: Any,
) -> None:
    async def slow_echo(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                await trio.sleep(env.msg.n)
                await ctx.reply(env, Pong(env.msg.n))

    async with open_node("a") as a:
        dst = await a.start_actor("slow", slow_echo)
        assert await a.call(dst, Ping(2), timeout_s=2.001) == Pong(2)
        with pytest.raises(CallTimeout):
            await a.call(dst, Ping(3), timeout_s=1)
        # The late reply to the call that timed out is dropped; the next call is fine.
        assert await a.call(dst, Ping(0), timeout_s=5) == Pong(0)
        assert a._pending == {}


async def test_many_calls_keep_the_deadline_heap_small(autojump_clock: Any) -> None:
    async with open_node("a") as a:
        dst = await a.start_actor("echo", echo)
        for i in range(1000):
            assert await a.call(dst, Ping(i), timeout_s=100) == Pong(i)
        assert a._pending == {}
        assert len(a._deadlines) <= 2 + 64


async def test_a_cancelled_call_is_forgotten(autojump_clock: Any) -> None:
    async with open_node("a") as a:
        dst = await a.start_actor("silent", silent)
        with trio.move_on_after(1) as scope:
            await a.call(dst, Ping(1), timeout_s=10)
        assert scope.cancelled_caught
        assert a._pending == {}
        # The call is a checkpoint even when it could finish at once.
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.call(Address("a", "nobody"), Ping(1))
        assert scope.cancelled_caught


async def test_a_shielded_call_keeps_its_deadline_while_the_node_closes(
    autojump_clock: Any,
) -> None:
    outcome: list[str] = []
    async with open_node("a") as a:
        dst = await a.start_actor("silent", silent)

        async def shielded_call() -> None:
            with trio.CancelScope(shield=True):
                started = trio.current_time()
                try:
                    await a.call(dst, Ping(1), timeout_s=3)
                except CallTimeout:
                    outcome.append(f"timed out after {trio.current_time() - started:g}s")

        a.nursery.start_soon(shielded_call)
        await trio.sleep(1)
        # Leaving the block cancels the node's nursery, the call timer task with it.
    assert outcome == ["timed out after 3s"]


async def test_send_builds_the_same_envelope_the_class_would() -> None:
    from gotask.runtime import node as node_module

    assert node_module._ENVELOPE_SLOTS is not None  # the fast path is in use
    async with open_node("a") as a:
        receive = a.open_inbox("box")
        src = Address("a", "me")
        await a.send(Address("a", "box"), Ping(1), src=src)
        got = receive.receive_nowait()
        expected = Envelope(Address("a", "box"), src, 0, Ping(1))
        assert type(got) is Envelope
        assert got == expected and hash(got) == hash(expected) and repr(got) == repr(expected)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            got.corr = 5  # type: ignore[misc]

    @attrs.frozen
    class Checked:
        n: int = attrs.field(validator=attrs.validators.ge(0))

    assert node_module._plain_slots(Checked) is None
    assert node_module._plain_slots(Reply) is not None


@pytest.mark.parametrize("timeout_s", [-1.0, float("nan")])
async def test_call_refuses_a_negative_or_nan_timeout(timeout_s: float) -> None:
    async with open_node("a") as a:
        dst = await a.start_actor("echo", echo)
        with pytest.raises(ValueError, match="timeout_s"):
            await a.call(dst, Ping(1), timeout_s=timeout_s)
        assert await a.call(dst, Ping(2), timeout_s=0.5) == Pong(2)
        assert await a.call(dst, Ping(3), timeout_s=float("inf")) == Pong(3)
        assert a._pending == {}


# -- typed calls and undeliverable requests ---------------------------------------------


@message("t.nl.typed")
@attrs.frozen
class TypedPing(Command[Pong]):
    n: int


async def test_a_typed_call_returns_its_declared_reply_or_a_protocol_error() -> None:
    async def wrong(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                await ctx.reply(env, Ping(env.msg.n))  # not the Pong TypedPing declares

    async with open_node("a") as a:
        assert reply_type(TypedPing) is Pong
        good = await a.start_actor("echo", echo)
        pong: Pong = await a.call(good, TypedPing(3))
        assert pong == Pong(3)
        bad = await a.start_actor("wrong", wrong)
        with pytest.raises(RemoteProtocolError, match="wrong@a answered TypedPing with Ping"):
            await a.call(bad, TypedPing(4))
        assert await a.call(bad, Ping(5)) == Ping(5)  # an untyped request is not checked


async def test_a_request_for_an_actor_whose_inbox_closed_is_answered_at_once(
        autojump_clock: Any) -> None:
    # The actor's receiving end is gone but its name is still routed: the caller must
    # get an error, never wait for its CallTimeout.
    async with open_node("a") as a:
        inbox = a.open_inbox("gone")
        await inbox.aclose()
        link = RecordingLink()
        a.attach_link(link)
        a.deliver_nowait(Envelope(Address("a", "gone"), Address("b", "$call"), 9, Ping(1)))
        await a.deliver(Envelope(Address("a", "gone"), Address("b", "$call"), 10, Ping(2)))
        assert [(r.corr, r.msg.type_name) for r in link.sent] == [
            (9, "ActorNotFound"), (10, "ActorNotFound")]
        assert link.sent[0].msg.message == "actor gone@a is not running"
