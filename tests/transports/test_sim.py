from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from itertools import combinations
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gotask._errors import ActorNotFound, CallTimeout, LocalProtocolError
from gotask.runtime import (
    ActorContext,
    Address,
    Envelope,
    Node,
    message,
    open_node,
    sim_world,
)
from gotask.testing.sim import run_deterministic
from gotask.transports import LinkOptions
from gotask.transports.sim import SimConfig, SimNetwork

from .conformance import OpenPair, Pair, TransportContract

Event = tuple[str, dict[str, Any]]
Run = Callable[..., Awaitable[None]]


@message("t.sim.num")
@attrs.frozen
class Num:
    n: int


@message("t.sim.text")
@attrs.frozen
class Text:
    text: str


def sink(got: list[int]) -> Run:
    """An actor recording every number it receives and answering calls with it."""

    async def run(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            for env in await ctx.receive_batch():
                got.append(env.msg.n)
                await ctx.reply(env, Num(env.msg.n))

    return run


async def silent(ctx: ActorContext, *, task_status: Any) -> None:
    task_status.started()
    await trio.sleep_forever()


@attrs.define
class Cluster:
    net: SimNetwork
    nodes: dict[str, Node]
    events: list[Event]
    got: dict[str, list[int]]

    def addr(self, node: str) -> Address:
        return Address(node, "sink")

    def kinds(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            info
            for k, info in self.events
            if k == kind and all(info.get(key) == value for key, value in match.items())
        ]


@asynccontextmanager
async def open_cluster(
    config: SimConfig | None = None, names: tuple[str, ...] = ("a", "b"), seed: int = 1
) -> AsyncIterator[Cluster]:
    """Nodes on one sim network, all connected, each running a `sink` actor."""
    world = sim_world(seed)
    events: list[Event] = []
    net = SimNetwork(world, config or SimConfig())
    net.on_event = lambda kind, info: events.append((kind, info))
    got: dict[str, list[int]] = {name: [] for name in names}
    async with AsyncExitStack() as stack:
        nodes = {name: await stack.enter_async_context(open_node(name, world)) for name in names}
        for name, node in nodes.items():
            await node.start_actor("sink", sink(got[name]))
        for x, y in combinations(names, 2):
            await net.connect(nodes[x], nodes[y])
        yield Cluster(net, nodes, events, got)


async def send_all(cluster: Cluster, src: str, dst: str, count: int) -> None:
    node = cluster.nodes[src]
    for i in range(count):
        await node.send(cluster.addr(dst), Num(i))


# -- faults off ------------------------------------------------------------------------


async def test_messages_arrive_in_order_with_faults_off(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(latency_s=(0.001, 0.05))) as c:
        await send_all(c, "a", "b", 300)
        await trio.sleep(1)
        assert c.got["b"] == list(range(300))
        assert c.net.statistics().dropped == 0


async def test_calls_cross_sim_links_both_ways(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        assert await c.nodes["a"].call(c.addr("b"), Num(7)) == Num(7)
        assert await c.nodes["b"].call(c.addr("a"), Num(8)) == Num(8)
        assert [info["kind"] for info in c.kinds("deliver")] == ["Envelope", "Reply"] * 2


async def test_call_to_missing_actor_across_link_fails(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        with pytest.raises(Exception, match="no actor 'nobody'"):
            await c.nodes["a"].call(Address("b", "nobody"), Num(1))


async def test_latency_stays_within_the_configured_range(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(latency_s=(0.01, 0.05))) as c:
        for i in range(200):
            c.nodes["a"].send_nowait(c.addr("b"), Num(i))
            await trio.sleep(0.003)
        await trio.sleep(1)
    sent = {info["seq"]: info["time"] for info in c.kinds("send")}
    delays = [info["time"] - sent[info["seq"]] for info in c.kinds("deliver")]
    assert len(delays) == 200
    assert all(0.01 <= delay <= 0.05 for delay in delays)
    assert max(delays) - min(delays) > 0.03


async def test_only_registered_valid_messages_cross(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        with pytest.raises(LocalProtocolError, match=r"Envelope\.msg: expected a message, got obj"):
            await c.nodes["a"].send(c.addr("b"), object())
        with pytest.raises(LocalProtocolError, match=r"Num\.n"):
            await c.nodes["a"].send(c.addr("b"), Num("x"))  # type: ignore[arg-type]
        assert c.net.statistics().sent == 0


async def test_send_nowait_is_bounded_and_send_waits_for_a_delivery(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(latency_s=(1.0, 1.0), outbound_max=2)) as c:
        link = c.net.link("a", "b")
        a = c.nodes["a"]
        a.send_nowait(c.addr("b"), Num(0))
        a.send_nowait(c.addr("b"), Num(1))
        assert link.in_flight == 2
        with pytest.raises(trio.WouldBlock):
            a.send_nowait(c.addr("b"), Num(2))
        await a.send(c.addr("b"), Num(2))
        assert trio.current_time() == 1.0
        await trio.sleep(2)
        assert c.got["b"] == [0, 1, 2]


async def test_text_crosses_byte_identical(autojump_clock: Any) -> None:
    seen: list[str] = []

    async def texts(ctx: ActorContext, *, task_status: Any) -> None:
        task_status.started()
        while True:
            seen.extend(env.msg.text for env in await ctx.receive_batch())

    async with open_cluster() as c:
        await c.nodes["b"].start_actor("texts", texts)
        await c.nodes["a"].send(Address("b", "texts"), Text("héllo \x00 ☃"))
        await trio.sleep(1)
    assert seen == ["héllo \x00 ☃"]


# -- faults on -------------------------------------------------------------------------


async def test_loss_drops_about_the_configured_fraction(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(loss=0.25)) as c:
        await send_all(c, "a", "b", 4000)
        await trio.sleep(1)
        stats = c.net.statistics()
    assert stats.sent == 4000
    assert stats.delivered + stats.dropped == 4000
    assert 2800 <= len(c.got["b"]) <= 3200  # 3000 expected, sd 27
    assert c.got["b"] == sorted(c.got["b"])
    assert {info["reason"] for info in c.kinds("drop")} == {"loss"}


async def test_duplicates_arrive_twice(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(duplicate=1.0)) as c:
        await send_all(c, "a", "b", 50)
        await trio.sleep(1)
    assert Counter(c.got["b"]) == {i: 2 for i in range(50)}
    assert len(c.kinds("dup")) == 50


async def test_some_duplicates_at_a_fractional_rate(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(duplicate=0.2)) as c:
        await send_all(c, "a", "b", 2000)
        await trio.sleep(1)
    extra = len(c.got["b"]) - 2000
    assert 300 <= extra <= 500  # 400 expected, sd 18
    assert set(c.got["b"]) == set(range(2000))


async def test_reordering_lets_later_messages_overtake(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(reorder=0.3)) as c:
        await send_all(c, "a", "b", 200)
        await trio.sleep(1)
    assert sorted(c.got["b"]) == list(range(200))
    assert c.got["b"] != list(range(200))


async def test_set_faults_switches_faults_mid_run(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        c.net.set_faults(loss=1.0)
        await send_all(c, "a", "b", 20)
        c.net.set_faults(loss=0.0, duplicate=1.0)
        await send_all(c, "a", "b", 3)
        c.net.set_faults(duplicate=0.0)
        await send_all(c, "a", "b", 2)
        await trio.sleep(1)
    assert c.got["b"] == [0, 0, 1, 1, 2, 2, 0, 1]
    assert c.net.config == SimConfig()


async def test_partition_drops_both_directions_and_heal_restores(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        a, b = c.nodes["a"], c.nodes["b"]
        c.net.partition({"a"}, {"b"})
        with pytest.raises(CallTimeout):
            await a.call(c.addr("b"), Num(1), timeout_s=1)
        with pytest.raises(CallTimeout):
            await b.call(c.addr("a"), Num(2), timeout_s=1)
        drops = c.kinds("drop", reason="partition")
        assert {(info["src"], info["dst"]) for info in drops} == {("a", "b"), ("b", "a")}
        assert a.connected_nodes() == ["b"]
        c.net.heal()
        assert await a.call(c.addr("b"), Num(3)) == Num(3)
        assert await b.call(c.addr("a"), Num(4)) == Num(4)


async def test_partition_drops_messages_already_in_flight(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(latency_s=(1.0, 1.0))) as c:
        await c.nodes["a"].send(c.addr("b"), Num(1))
        await trio.sleep(0.5)
        c.net.partition(["b"], ["a"])
        await trio.sleep(1)
        c.net.heal()
        await trio.sleep(2)
    assert c.got["b"] == []
    assert len(c.kinds("drop", reason="partition")) == 1


async def test_isolate_cuts_one_node_off(autojump_clock: Any) -> None:
    async with open_cluster(names=("a", "b", "c")) as c:
        c.net.isolate("b")
        assert await c.nodes["a"].call(c.addr("c"), Num(1)) == Num(1)
        for src, dst in [("a", "b"), ("b", "c")]:
            with pytest.raises(CallTimeout):
                await c.nodes[src].call(c.addr(dst), Num(2), timeout_s=1)
        c.net.heal()
        assert await c.nodes["c"].call(c.addr("b"), Num(3)) == Num(3)


async def test_partition_groups_must_be_disjoint() -> None:
    net = SimNetwork(sim_world(1))
    with pytest.raises(ValueError, match=r"both sides of a partition: \['b'\]"):
        net.partition({"a", "b"}, {"b", "c"})


async def test_disconnect_fails_a_pending_call_at_once(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        a = c.nodes["a"]
        await c.nodes["b"].start_actor("silent", silent)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_disconnect_later, c.net, 1.0)
            with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
                await a.call(Address("b", "silent"), Num(1), timeout_s=10)
        assert trio.current_time() == 1.0
        assert a.connected_nodes() == c.nodes["b"].connected_nodes() == []
        with pytest.raises(ActorNotFound, match="not connected"):
            await a.call(c.addr("b"), Num(2))
        await c.net.connect(a, c.nodes["b"])
        assert await a.call(c.addr("b"), Num(3)) == Num(3)


async def _disconnect_later(net: SimNetwork, delay_s: float) -> None:
    await trio.sleep(delay_s)
    net.disconnect("a", "b")


async def test_disconnect_loses_in_flight_and_breaks_waiting_senders(autojump_clock: Any) -> None:
    async with open_cluster(SimConfig(latency_s=(10.0, 10.0), outbound_max=2)) as c:
        link = c.net.link("a", "b")
        a = c.nodes["a"]
        a.send_nowait(c.addr("b"), Num(0))
        a.send_nowait(c.addr("b"), Num(1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_disconnect_later, c.net, 1.0)
            # The node turns the link's BrokenResourceError into what `send` promises.
            with pytest.raises(ActorNotFound, match="connection to node 'b' lost"):
                await a.send(c.addr("b"), Num(2))
        assert link.closed and link.in_flight == 0
        with pytest.raises(trio.BrokenResourceError):
            link.send_nowait(Envelope(c.addr("b"), None, 0, Num(3)))
        await trio.sleep(20)
    assert c.got["b"] == []
    assert len(c.kinds("drop", reason="closed")) == 2


async def test_messages_to_a_stopped_node_vanish(autojump_clock: Any) -> None:
    net = SimNetwork(sim_world(1))
    events: list[Event] = []
    net.on_event = lambda kind, info: events.append((kind, info))
    async with open_node("a") as a:
        async with open_node("b") as b:
            await net.connect(a, b)
        await a.send(Address("b", "sink"), Num(1))
        with pytest.raises(CallTimeout):
            await a.call(Address("b", "sink"), Num(2), timeout_s=1)
    assert [info["reason"] for kind, info in events if kind == "drop"] == ["down", "down"]


async def test_connect_resets_an_existing_connection(autojump_clock: Any) -> None:
    async with open_cluster() as c:
        old = c.net.link("a", "b")
        await c.net.connect(c.nodes["b"], c.nodes["a"])
        assert old.closed and c.net.link("a", "b") is not old
        assert await c.nodes["a"].call(c.addr("b"), Num(1)) == Num(1)
        with pytest.raises(ValueError, match="to itself"):
            await c.net.connect(c.nodes["a"], c.nodes["a"])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="loss must be within"):
        SimConfig(loss=1.5)
    with pytest.raises(ValueError, match="latency_s must be"):
        SimConfig(latency_s=(0.2, 0.1))
    with pytest.raises(ValueError, match="outbound_max must be"):
        SimConfig(outbound_max=0)
    with pytest.raises(ValueError, match="reorder must be within"):
        SimNetwork(sim_world(1)).set_faults(reorder=-0.1)


# -- determinism -----------------------------------------------------------------------


async def _chaos(seed: int) -> list[Event]:
    """Three nodes under every fault, with concurrent senders and calls."""
    config = SimConfig(latency_s=(0.001, 0.02), loss=0.1, duplicate=0.1, reorder=0.2)
    async with open_cluster(config, ("a", "b", "c"), seed) as c:
        async with trio.open_nursery() as nursery:
            for src, dst in [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")]:
                nursery.start_soon(send_all, c, src, dst, 40)
                nursery.start_soon(_calls, c, dst, src)
        c.net.partition({"a"}, {"b", "c"})
        await send_all(c, "b", "a", 5)
        await trio.sleep(1)
    return c.events


async def _calls(c: Cluster, src: str, dst: str) -> None:
    for i in range(10):
        try:
            await c.nodes[src].call(c.addr(dst), Num(i), timeout_s=0.1)
        except CallTimeout:
            pass


def test_same_seed_replays_the_same_trace_and_another_seed_differs() -> None:
    first = run_deterministic(_chaos, 7, 7)
    assert first == run_deterministic(_chaos, 7, 7)
    assert first != run_deterministic(_chaos, 8, 8)
    kinds = Counter(kind for kind, _ in first)
    assert kinds["drop"] and kinds["dup"] and kinds["deliver"]


# -- the transport contract, faults off ------------------------------------------------


@asynccontextmanager
async def open_sim_pair(options: LinkOptions | None = None) -> AsyncIterator[Pair]:
    options = options or LinkOptions()
    config = SimConfig(outbound_max=options.outbound_max, frame_bytes_max=options.frame_bytes_max)
    net = SimNetwork(sim_world(0), config)

    async def sever() -> None:
        net.disconnect("a", "b")
        await trio.lowlevel.checkpoint()

    async with open_node("a") as a, open_node("b") as b:
        await net.connect(a, b)
        yield Pair(a, b, sever)


def _run_autojump(fn: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
    """pytest-trio's runner with virtual time, the clock the sim network is built for."""
    kwargs["clock"] = kwargs.get("clock") or trio.testing.MockClock(autojump_threshold=0)
    trio.run(fn, **kwargs)


@pytest.mark.trio(run=_run_autojump)
class TestSimTransport(TransportContract):
    @pytest.fixture
    def open_pair(self) -> OpenPair:
        return open_sim_pair
