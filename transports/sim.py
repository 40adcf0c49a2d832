"""A simulated network: seeded latency, loss, duplication, reordering and partitions.

Rules of this module:
- Every item crosses as bytes through the real codec (`Connection.send` at send, with
  its frame limit; `decode` at delivery), so only registered, valid messages pass, and
  `LocalProtocolError` reaches the sender, as in production.
- All randomness comes from one stream derived from `world.rng` when the network is
  built; all time is trio's clock. Each accepted send draws the same six numbers in the
  same order (loss, latency, duplicate, duplicate latency, reorder, reorder delay),
  whatever the configuration, so a run is a pure function of its seed and switching a
  fault on does not shift the draws of other sends.
- A link is FIFO unless a message is picked for reordering: its extra delay does not
  hold back the messages after it. A duplicate arrives no earlier than its original.
- A link's outbound buffer counts messages in flight on it: `send_nowait` raises
  `trio.WouldBlock` at `outbound_max`, `send` waits for a delivery.
- Partitions drop silently, at send and again at delivery, in both directions: the
  runtime notices only through call timeouts. `disconnect` is a connection reset: both
  links close, in-flight messages are lost, waiting calls fail at once.
- Each link's delivery task runs in its receiving node's nursery: when that node stops,
  messages sent to it vanish, as with a host that went down. What `Node.deliver` raises
  is logged and the message dropped, as `_link` does: a delivery task never fails.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from gotask._errors import ActorNotFound, LocalProtocolError
from gotask.runtime.message import Envelope, Reply
from gotask.runtime.node import Node
from gotask.runtime.world import World

from ._wire import FRAME_BYTES_MAX, PREAUTH_FRAME_BYTES_MAX, Connection, decode

__all__ = ["EventHook", "SimConfig", "SimLink", "SimNetwork", "SimStatistics"]

log = logging.getLogger("gotask.transport")

#: What `Node.deliver` may raise that must not kill a delivery task (as in `_link`).
_DELIVERY_ERRORS = (
    ActorNotFound,
    LocalProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

#: Called with an event kind ("send", "deliver", "drop", "dup") and its details:
#: time (trio seconds), seq, src, dst, kind (Envelope or Reply), type (the carried
#: message's class name) and, for "drop", reason (loss, partition, closed, down).
EventHook = Callable[[str, dict[str, Any]], None]


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value}")


def _range_s(
    instance: object, attribute: attrs.Attribute[tuple[float, float]], value: tuple[float, float]
) -> None:
    low, high = value
    if not 0.0 <= low <= high < math.inf:
        raise ValueError(f"{attribute.name} must be (min, max) with 0 <= min <= max, got {value}")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen
class SimConfig:
    """How the simulated network behaves.

    Args:
        latency_s: (min, max) one-way delay in seconds, drawn uniformly per message.
        loss: probability that a message is dropped.
        duplicate: probability that a message is delivered twice.
        reorder: probability that a message gets an extra delay, so later ones overtake it.
        reorder_delay_s: (min, max) of that extra delay, in seconds.
        outbound_max: messages in flight per link before senders wait.
        frame_bytes_max: largest message body a link carries, in bytes.
    """

    latency_s: tuple[float, float] = attrs.field(default=(0.001, 0.005), validator=_range_s)
    loss: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    reorder_delay_s: tuple[float, float] = attrs.field(default=(0.005, 0.05), validator=_range_s)
    outbound_max: int = attrs.field(default=1024, validator=_positive)
    frame_bytes_max: int = attrs.field(default=FRAME_BYTES_MAX, validator=_positive)


@attrs.frozen
class SimStatistics:
    """Counts of network events since the network was built."""

    sent: int
    delivered: int
    dropped: int
    duplicated: int


@attrs.frozen
class _Draw:
    """The fault decisions for one send, drawn in a fixed order."""

    lost: bool
    latency_s: float
    dup: bool
    dup_latency_s: float
    reorder: bool
    reorder_delay_s: float

    @classmethod
    def take(cls, rng: random.Random, config: SimConfig) -> _Draw:
        lost = rng.random() < config.loss
        latency_s = rng.uniform(*config.latency_s)
        dup = rng.random() < config.duplicate
        dup_latency_s = rng.uniform(*config.latency_s)
        reorder = rng.random() < config.reorder
        reorder_delay_s = rng.uniform(*config.reorder_delay_s)
        return cls(lost, latency_s, dup, dup_latency_s, reorder, reorder_delay_s)


@attrs.frozen
class _Flight:
    """One message on the wire; `seq` names it in events (a duplicate shares it)."""

    seq: int
    kind: str
    msg_type: str
    body: bytes


@attrs.define(eq=False)
class SimLink:
    """One direction of a simulated connection; implements the runtime's `Link`.

    Made by `SimNetwork.connect`; do not construct directly.
    """

    net: SimNetwork
    src: Node
    dst: Node
    _conn: Connection
    closed: bool = False
    _receiving: bool = False
    _heap: list[tuple[float, int, _Flight]] = attrs.Factory(list)
    _pushes: itertools.count[int] = attrs.Factory(itertools.count)
    _tail_at: float = -math.inf
    _space: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    _scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _wake: trio.CancelScope | None = None

    @property
    def peer(self) -> str:
        """The receiving node's name."""
        return self.dst.name

    @property
    def in_flight(self) -> int:
        """Messages sent on this link and not yet delivered or dropped."""
        return len(self._heap)

    def send_nowait(self, item: Envelope | Reply) -> None:
        """Put one item on the wire.

        Raises:
            trio.BrokenResourceError: the link was closed.
            trio.WouldBlock: `outbound_max` messages are in flight.
            LocalProtocolError: the item cannot be encoded or exceeds `frame_bytes_max`.
        """
        if self.closed:
            raise trio.BrokenResourceError(f"sim link {self.src.name}->{self.peer} is closed")
        body = self._conn.send(item)[4:]
        if self._receiving and len(self._heap) >= self.net.config.outbound_max:
            raise trio.WouldBlock
        self.net._transmit(
            self, _Flight(self.net._next_seq(), type(item).__name__, type(item.msg).__name__, body)
        )

    async def send(self, item: Envelope | Reply) -> None:
        """Put one item on the wire, waiting while `outbound_max` messages are in flight."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.send_nowait(item)
            except trio.WouldBlock:
                await self._space.park()
            else:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _schedule(self, flight: _Flight, draw: _Draw) -> float:
        """Queue `flight` for delivery; return when it is due (trio seconds)."""
        at = max(trio.current_time() + draw.latency_s, self._tail_at)
        if draw.reorder:
            at += draw.reorder_delay_s
        else:
            self._tail_at = at
        self._push(at, flight)
        return at

    def _push(self, at: float, flight: _Flight) -> None:
        heapq.heappush(self._heap, (at, next(self._pushes), flight))
        if self._wake is not None and at < self._wake.deadline:
            self._wake.deadline = at

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due messages until the link closes or the receiving node stops."""
        self._receiving = True
        try:
            with self._scope:
                task_status.started()
                while True:
                    await self.net._arrive(self, await self._next_due())
        finally:
            self._receiving = False
            self._drop_all("down")

    async def _next_due(self) -> _Flight:
        while not self._heap or self._heap[0][0] > trio.current_time():
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as wake:
                self._wake = wake
                await trio.sleep_forever()
            self._wake = None
        _, _, flight = heapq.heappop(self._heap)
        self._space.unpark()
        return flight

    def _close(self) -> None:
        """Reset: lose what is in flight, wake waiting senders, fail waiting calls."""
        self.closed = True
        self._drop_all("closed")
        self._scope.cancel()
        self.src.detach_link(self)

    def _drop_all(self, reason: str) -> None:
        for _, _, flight in sorted(self._heap):
            self.net._emit("drop", self, flight, reason=reason)
        self._heap.clear()
        self._space.unpark_all()


@attrs.define(eq=False)
class SimNetwork:
    """Connects nodes through simulated links and injects faults into them.

    Args:
        world: the simulation's World; its rng seeds the network's random stream.
        config: latency and fault settings; change faults mid-run with `set_faults`.
    """

    world: World
    config: SimConfig = attrs.Factory(SimConfig)
    on_event: EventHook | None = None
    _rng: random.Random = attrs.field(init=False)
    _links: dict[tuple[str, str], SimLink] = attrs.field(init=False, factory=dict)
    _cuts: set[frozenset[str]] = attrs.field(init=False, factory=set)
    _isolated: set[str] = attrs.field(init=False, factory=set)
    _counts: Counter[str] = attrs.field(init=False, factory=Counter)
    _seq: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.world.rng.getrandbits(64))

    # -- topology ----------------------------------------------------------------------

    async def connect(self, node_a: Node, node_b: Node) -> None:
        """Link two nodes both ways; an existing connection between them is reset first.

        Raises:
            ValueError: both are the same node.
        """
        if node_a.name == node_b.name:
            raise ValueError(f"cannot connect node {node_a.name!r} to itself")
        self.disconnect(node_a.name, node_b.name)
        ab = SimLink(self, node_a, node_b, self._connection())
        ba = SimLink(self, node_b, node_a, self._connection())
        await node_b.nursery.start(ab._run)
        await node_a.nursery.start(ba._run)
        self._links[node_a.name, node_b.name] = ab
        self._links[node_b.name, node_a.name] = ba
        node_a.attach_link(ab)
        node_b.attach_link(ba)

    def disconnect(self, a: str, b: str) -> None:
        """Reset the connection between nodes `a` and `b` (no-op if there is none).

        In-flight messages are lost; calls waiting on the other side fail with
        `ActorNotFound` at once. Reconnect with `connect`.
        """
        for key in ((a, b), (b, a)):
            link = self._links.pop(key, None)
            if link is not None:
                link._close()

    def link(self, src: str, dst: str) -> SimLink:
        """The link carrying messages from node `src` to node `dst`.

        Raises:
            LookupError: the two nodes are not connected.
        """
        try:
            return self._links[src, dst]
        except KeyError:
            raise LookupError(f"no sim link from {src!r} to {dst!r}") from None

    # -- faults ------------------------------------------------------------------------

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Drop every message between a node of `group_a` and one of `group_b`, both ways.

        Raises:
            ValueError: a node is in both groups.
        """
        side_a, side_b = set(group_a), set(group_b)
        if side_a & side_b:
            raise ValueError(f"nodes on both sides of a partition: {sorted(side_a & side_b)}")
        self._cuts.update(frozenset((x, y)) for x in side_a for y in side_b)

    def isolate(self, node: str) -> None:
        """Drop every message to or from `node` until `heal`."""
        self._isolated.add(node)

    def heal(self) -> None:
        """Remove every partition and isolation."""
        self._cuts.clear()
        self._isolated.clear()

    def set_faults(
        self,
        *,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        latency_s: tuple[float, float] | None = None,
    ) -> None:
        """Change fault probabilities (and latency, in seconds) for later sends.

        Raises:
            ValueError: a probability is outside [0, 1] or the latency range is invalid.
        """
        changes: dict[str, Any] = {
            "loss": loss,
            "duplicate": duplicate,
            "reorder": reorder,
            "latency_s": latency_s,
        }
        given = {name: value for name, value in changes.items() if value is not None}
        self.config = attrs.evolve(self.config, **given)

    def statistics(self) -> SimStatistics:
        """Counts of sends, deliveries, drops and duplicates so far."""
        counts = self._counts
        return SimStatistics(counts["send"], counts["deliver"], counts["drop"], counts["dup"])

    # -- the wire ----------------------------------------------------------------------

    def _connection(self) -> Connection:
        """The codec of one link direction: production's encoding and frame limit."""
        conn = Connection(
            frame_bytes_max=self.config.frame_bytes_max,
            preauth_frame_bytes_max=min(self.config.frame_bytes_max, PREAUTH_FRAME_BYTES_MAX),
        )
        conn.mark_authenticated()
        return conn

    def _blocked(self, src: str, dst: str) -> bool:
        if src in self._isolated or dst in self._isolated:
            return True
        return bool(self._cuts) and frozenset((src, dst)) in self._cuts

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _transmit(self, link: SimLink, flight: _Flight) -> None:
        draw = _Draw.take(self._rng, self.config)
        self._emit("send", link, flight)
        reason = self._drop_reason(link, draw)
        if reason is not None:
            self._emit("drop", link, flight, reason=reason)
            return
        at = link._schedule(flight, draw)
        if draw.dup:
            link._push(max(trio.current_time() + draw.dup_latency_s, at), flight)
            self._emit("dup", link, flight)

    def _drop_reason(self, link: SimLink, draw: _Draw) -> str | None:
        if not link._receiving:
            return "down"
        if self._blocked(link.src.name, link.dst.name):
            return "partition"
        return "loss" if draw.lost else None

    async def _arrive(self, link: SimLink, flight: _Flight) -> None:
        if self._blocked(link.src.name, link.dst.name):
            self._emit("drop", link, flight, reason="partition")
            return
        item = decode(flight.body)
        assert isinstance(item, Envelope | Reply), "the codec returned a non-routable message"
        self._emit("deliver", link, flight)
        try:
            await link.dst.deliver(item)
        except _DELIVERY_ERRORS as exc:
            src, dst = link.src.name, link.peer
            log.warning("sim link %s->%s: dropped %s: %s", src, dst, flight.kind, exc)

    def _emit(self, kind: str, link: SimLink, flight: _Flight, **extra: str) -> None:
        self._counts[kind] += 1
        if self.on_event is not None:
            self.on_event(
                kind,
                {
                    "time": trio.current_time(),
                    "seq": flight.seq,
                    "src": link.src.name,
                    "dst": link.dst.name,
                    "kind": flight.kind,
                    "type": flight.msg_type,
                    **extra,
                },
            )
