"""A Node: a nursery of actors and the router between them.

Rules of this module:
- Every actor has an `Address(node, name)` and a bounded inbox of `Envelope`s. The
  inbox outlives restarts of its actor, so a crash never drops what was queued.
- `send` never waits for a reply; it waits only while the destination inbox (or the
  link's outbound buffer) is full: that is backpressure, never an unbounded buffer.
- `call` is request/response, correlated by an id unique on this node. A failure on the
  far side comes back as `ErrorReply` and is raised here as `RemoteActorError`.
- Messages for another node go through the `Link` attached for that node; callers cannot
  tell local from remote except by latency and failure. When a link goes away, calls
  waiting on that node fail at once with `ActorNotFound`, and so do senders waiting for
  room on it.
- A waiting `call` costs no cancel scope: it parks with `wait_task_rescheduled` and one
  timer task per node enforces every call's deadline (a heap, woken only when a call
  needs an earlier deadline than the one it sleeps to). Whoever settles a call first (the
  reply, the loss of its link, the timer, a cancellation) removes it from `_pending`, so
  each call is settled exactly once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar, overload

import attrs
import trio

from gotask._errors import (
    ActorNotFound,
    CallTimeout,
    LocalProtocolError,
    RemoteActorError,
    RemoteProtocolError,
)
from gotask.runtime.message import Address, Command, Envelope, ErrorReply, Reply, reply_type
from gotask.runtime.world import World, real_world

__all__ = ["CALL_TIMEOUT_S", "INBOX_MAX", "Link", "Node", "open_node"]

log = logging.getLogger("gotask.runtime")

INBOX_MAX = 1024
CALL_TIMEOUT_S = 10.0
CALLER_NAME = "$call"
R = TypeVar("R")


class Link(Protocol):
    """A connection to one peer node, provided by a transport."""

    @property
    def peer(self) -> str:
        """The peer's node name, learnt in the handshake."""
        ...

    def send_nowait(self, item: Envelope | Reply) -> None:
        """Queue one item; raise `trio.WouldBlock` when the outbound buffer is full and
        `trio.BrokenResourceError` when the link is gone."""
        ...

    async def send(self, item: Envelope | Reply) -> None:
        """Queue one item, waiting while the outbound buffer is full."""
        ...


class _Pending:
    """A call waiting for its reply; `task` is set while its caller is parked."""

    __slots__ = (
        "deadline_s", "done", "dst_node", "error", "orphaned", "reply", "task", "timed_out"
    )

    def __init__(self, dst_node: str, deadline_s: float) -> None:
        self.dst_node = dst_node
        self.deadline_s = deadline_s
        self.task: trio.lowlevel.Task | None = None
        self.done = False
        self.timed_out = False
        self.orphaned = False  # woken because the timer task stopped: wait on its own
        self.reply: Any = None
        self.error: BaseException | None = None


def _plain_slots(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """The slot setters of `cls` when its attrs `__init__` does nothing but store its
    arguments in them (no validator, converter, init hook or other slot), else None.

    `send` builds an `Envelope` per message; setting its slots inline costs about half
    of calling the class. Should `Envelope` ever need its `__init__`, this says so.
    """
    fields = attrs.fields(cls)
    init = getattr(getattr(cls, "__init__", None), "__code__", None)
    if (
        init is None
        or not init.co_filename.startswith("<attrs generated")
        or hasattr(cls, "__attrs_pre_init__")
        or hasattr(cls, "__attrs_post_init__")
        or any(f.validator is not None or f.converter is not None for f in fields)
        or cls.__mro__[1:] != (object,)
        or set(cls.__dict__.get("__slots__", ())) - {"__weakref__"} != {f.name for f in fields}
    ):
        return None
    return [cls.__dict__[f.name].__set__ for f in fields]


_new = object.__new__
_ENVELOPE_SLOTS = _plain_slots(Envelope)

#: Stale entries (calls already settled) the deadline heap may hold beyond twice the
#: number of calls waiting, before it is rebuilt.
_HEAP_SLACK = 64


@attrs.define(eq=False)
class Node:
    """Hosts actors and routes messages between them and to other nodes.

    Use `open_node()`; do not construct directly.
    """

    name: str
    world: World
    nursery: trio.Nursery
    _inboxes: dict[str, trio.MemorySendChannel[Envelope]] = attrs.Factory(dict)
    _links: dict[str, Link] = attrs.Factory(dict)
    #: Open links to a peer that a newer link to the same peer replaced, oldest first.
    _older_links: dict[str, list[Link]] = attrs.Factory(dict)
    _peer_lost: list[Callable[[str], None]] = attrs.Factory(list)
    _pending: dict[int, _Pending] = attrs.Factory(dict)
    # Correlation ids start at a random point (from the World, so simulations replay):
    # a node that restarts under the same name must not take a late reply meant for
    # its previous incarnation as the answer to a new call.
    _corr: itertools.count[int] = attrs.Factory(
        lambda self: itertools.count(self.world.rng.getrandbits(53) + 1), takes_self=True)
    _caller: Address = attrs.field(init=False)
    #: (deadline, corr) of waiting calls, with stale entries of settled ones.
    _deadlines: list[tuple[float, int]] = attrs.field(init=False, factory=list)
    #: The scope the timer task sleeps in; None until the timer task started.
    _timer_scope: trio.CancelScope | None = attrs.field(init=False, default=None)
    _now: Callable[[], float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._caller = Address(self.name, CALLER_NAME)
        # trio's clock, bound once: `trio.current_time()` costs three calls per look.
        self._now = trio.lowlevel.current_clock().current_time

    # -- actors ----------------------------------------------------------------------

    def address(self, name: str) -> Address:
        """Return the address of actor `name` on this node."""
        return Address(self.name, name)

    def open_inbox(
        self, name: str, inbox_max: int = INBOX_MAX
    ) -> trio.MemoryReceiveChannel[Envelope]:
        """Create the bounded inbox of actor `name` and return its receiving end.

        Raises:
            ValueError: the name is taken or starts with '$' (reserved).
        """
        if name in self._inboxes or name.startswith("$"):
            raise ValueError(f"actor name {name!r} is taken or reserved on node {self.name!r}")
        if inbox_max < 1:
            raise ValueError(f"inbox_max must be >= 1, got {inbox_max}")
        send, receive = trio.open_memory_channel[Envelope](inbox_max)
        self._inboxes[name] = send
        return receive

    def close_inbox(self, name: str) -> None:
        """Forget actor `name`; messages sent to it afterwards get ActorNotFound."""
        channel = self._inboxes.pop(name, None)
        if channel is not None:
            channel.close()

    def actor_names(self) -> list[str]:
        """Names of the actors hosted here."""
        return sorted(self._inboxes)

    async def start_actor(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        inbox_max: int = INBOX_MAX,
        intensity: int = 3,
        period_s: float = 5.0,
    ) -> Address:
        """Start a supervised actor and wait until it reports ready.

        Args:
            name: the actor's name on this node.
            run: `async def run(ctx: ActorContext, *, task_status)`; it must call
                `task_status.started()` once ready.
            inbox_max: capacity of the actor's inbox.
            intensity, period_s: more than `intensity` crashes within `period_s` seconds
                make the node fail with `SupervisorGaveUp`.
        """
        from gotask.runtime.supervisor import ChildSpec, supervise

        spec = ChildSpec(name, run, inbox_max, intensity, period_s)
        await self.nursery.start(supervise, self, spec)
        return self.address(name)

    # -- sending ---------------------------------------------------------------------

    def send_nowait(self, dst: Address, msg: Any, *, src: Address | None = None) -> None:
        """Send without waiting.

        Raises:
            trio.WouldBlock: the destination inbox or link buffer is full.
            ActorNotFound: no such actor, or its node is not (or no longer) connected.
        """
        self._route_nowait(Envelope(dst, src, 0, msg))

    async def send(self, dst: Address, msg: Any, *, src: Address | None = None) -> None:
        """Send, waiting only while the destination is full (backpressure).

        Raises:
            ActorNotFound: no such actor, or its node is not connected, or the connection
                was lost while waiting for room on it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if _ENVELOPE_SLOTS is None:
            env = Envelope(dst, src, 0, msg)
        else:  # the attrs __init__, minus its call (see `_plain_slots`)
            env = _new(Envelope)
            set_dst, set_src, set_corr, set_msg = _ENVELOPE_SLOTS
            set_dst(env, dst)
            set_src(env, src)
            set_corr(env, 0)
            set_msg(env, msg)
        node = dst.node
        link = None if node == self.name else self._links.get(node)
        try:
            if link is None:  # local, or no such node: `_route_nowait` sorts it out
                self._route_nowait(env)
            else:  # `_route_nowait` for a remote actor, inline: the streaming hot path
                try:
                    link.send_nowait(env)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise ActorNotFound(f"connection to node {node!r} lost") from None
        except trio.WouldBlock:
            await self._route_waiting(env)

    @overload
    async def call(self, dst: Address, msg: Command[R], *,
                   timeout_s: float = CALL_TIMEOUT_S) -> R: ...

    @overload
    async def call(self, dst: Address, msg: Any, *, timeout_s: float = CALL_TIMEOUT_S) -> Any: ...

    async def call(self, dst: Address, msg: Any, *, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """Send a request and return the reply.

        For a `Command[R]` the reply is an `R`: the type is checked here, so callers
        need no `isinstance` of their own.

        Raises:
            CallTimeout: no reply within `timeout_s` seconds.
            RemoteActorError: the actor raised while handling the request.
            RemoteProtocolError: the reply to a `Command` is not of its declared type.
            ActorNotFound: no such actor, or its node is (or became) unreachable.
            ValueError: `timeout_s` is negative or NaN.
        """
        if not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s!r}")
        await trio.lowlevel.checkpoint_if_cancelled()
        corr = next(self._corr)
        # The timeout covers sending too: a full inbox or link is a slow peer.
        deadline_s = self._now() + timeout_s
        env = Envelope(dst, self._caller, corr, msg)
        pending = self._pending[corr] = _Pending(dst.node, deadline_s)
        try:
            try:
                self._route_nowait(env)
            except trio.WouldBlock:
                with trio.CancelScope(deadline=deadline_s) as scope:
                    await self._route_waiting(env)
                pending.timed_out = scope.cancelled_caught and not pending.done
            if not pending.done and not pending.timed_out:
                await self._wait_settled(corr, pending)
        finally:
            self._pending.pop(corr, None)
        return _outcome(dst, msg, timeout_s, pending)

    async def _wait_settled(self, corr: int, pending: _Pending) -> None:
        """Park until call `corr` is settled or its deadline passes (`timed_out` is set).

        A cancellation forgets the call: a late reply is dropped.
        """
        if self._arm_timer(pending.deadline_s, corr):
            await self._park(corr, pending)
            if not pending.orphaned:
                return
        # No timer task (the node is closing): a scope of our own, then.
        with trio.CancelScope(deadline=pending.deadline_s) as scope:
            await self._park(corr, pending)
        pending.timed_out = scope.cancelled_caught and not pending.done

    async def _park(self, corr: int, pending: _Pending) -> None:
        pending.task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            pending.task = None
            self._pending.pop(corr, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _settle(self, corr: int) -> _Pending | None:
        """Take call `corr` out of `_pending` and wake its caller; None if already settled.

        The caller reads the outcome the settler stores on the returned record.
        """
        pending = self._pending.pop(corr, None)
        if pending is not None:
            pending.done = True
            task, pending.task = pending.task, None
            if task is not None:
                trio.lowlevel.reschedule(task)
        return pending

    # -- call deadlines --------------------------------------------------------------

    def _arm_timer(self, deadline_s: float, corr: int) -> bool:
        """Have the timer task time out call `corr` at `deadline_s`; False if it cannot."""
        scope = self._timer_scope
        if scope is None:
            if self.nursery.cancel_scope.cancel_called:
                return False  # the timer task would be cancelled at once
            try:
                self.nursery.start_soon(self._run_timer)
            except RuntimeError:  # the nursery is closed
                return False
            scope = self._timer_scope = trio.CancelScope(deadline=deadline_s)
        elif deadline_s < scope.deadline:
            scope.deadline = deadline_s
        heap = self._deadlines
        heapq.heappush(heap, (deadline_s, corr))
        if len(heap) > 2 * len(self._pending) + _HEAP_SLACK:
            pending = self._pending
            heap[:] = [entry for entry in heap if entry[1] in pending]
            heapq.heapify(heap)
        return True

    async def _run_timer(self) -> None:
        """Time out the calls whose deadline passed; sleep until the next one."""
        heap, pending = self._deadlines, self._pending
        try:
            while True:
                assert self._timer_scope is not None
                with self._timer_scope:
                    await trio.sleep_forever()
                now_s = self._now()
                while heap and (heap[0][0] <= now_s or heap[0][1] not in pending):
                    _, corr = heapq.heappop(heap)
                    record = pending.get(corr)
                    if record is not None and record.deadline_s <= now_s:
                        record.timed_out = True
                        self._settle(corr)
                self._timer_scope = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
        finally:
            # Cancelled with the node: whoever still waits (shielded) keeps its deadline
            # with a scope of its own.
            self._timer_scope = None
            heap.clear()
            for record in pending.values():
                task, record.task = record.task, None
                if task is not None:
                    record.orphaned = True
                    trio.lowlevel.reschedule(task)

    def reply_nowait(self, request: Envelope, msg: Any) -> None:
        """Answer a request received in an inbox (no-op for a plain send)."""
        if request.corr and request.src is not None:
            self._route_nowait(Reply(request.src.node, request.corr, msg))

    async def reply(self, request: Envelope, msg: Any) -> None:
        """Answer a request, waiting while the way back is full."""
        if request.corr and request.src is not None:
            try:
                await self._route(Reply(request.src.node, request.corr, msg))
            except LocalProtocolError as exc:  # too big for the wire, say: the caller is told
                await self._route(Reply(request.src.node, request.corr, error_reply(exc)))

    async def reply_error(self, request: Envelope, exc: BaseException) -> None:
        """Answer a request with an error: type name and traceback text, never pickled."""
        await self.reply(request, error_reply(exc))

    # -- routing ---------------------------------------------------------------------

    def _route_nowait(self, item: Envelope | Reply) -> None:
        node = item.dst.node if isinstance(item, Envelope) else item.dst_node
        if node == self.name:
            self._deliver_local_nowait(item)
            return
        link = self._links.get(node)
        if link is None:
            raise ActorNotFound(f"node {node!r} is not connected to {self.name!r}")
        try:
            link.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorNotFound(f"connection to node {node!r} lost") from None

    async def _route(self, item: Envelope | Reply) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._route_nowait(item)
        except trio.WouldBlock:
            await self._route_waiting(item)

    async def _route_waiting(self, item: Envelope | Reply) -> None:
        """Route `item`, waiting for room: `_route_nowait` found its way full."""
        node = item.dst.node if isinstance(item, Envelope) else item.dst_node
        if node == self.name:
            assert isinstance(item, Envelope)
            await self._inbox_of(item).send(item)
            return
        try:
            await self._link_to(node).send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorNotFound(f"connection to node {node!r} lost") from None

    def _deliver_local_nowait(self, item: Envelope | Reply) -> None:
        if type(item) is Envelope:
            self._inbox_of(item).send_nowait(item)
        else:
            assert isinstance(item, Reply)
            self._resolve(item)

    def _inbox_of(self, env: Envelope) -> trio.MemorySendChannel[Envelope]:
        inbox = self._inboxes.get(env.dst.name)
        if inbox is None:
            raise ActorNotFound(f"no actor {env.dst.name!r} on node {self.name!r}")
        return inbox

    def _link_to(self, node: str) -> Link:
        link = self._links.get(node)
        if link is None:
            raise ActorNotFound(f"node {node!r} is not connected to {self.name!r}")
        return link

    def _resolve(self, reply: Reply) -> None:
        pending = self._settle(reply.corr)
        if pending is None:
            log.debug("late reply %d on %s dropped (the call timed out)", reply.corr, self.name)
            return
        pending.reply = reply.msg

    # -- transports ------------------------------------------------------------------

    async def deliver(self, item: Envelope | Reply) -> None:
        """Take an item that arrived from a link: deliver it here or relay it.

        A request that cannot be delivered (no such actor, its inbox closed, its node
        unreachable) is answered with an error, so its caller never waits for a timeout;
        a plain message that cannot be delivered is logged and dropped (there is no one
        to tell).
        """
        try:
            await self._route(item)
        except _UNDELIVERABLE as exc:
            if isinstance(item, Envelope) and item.corr:
                await self._route(_refusal(item, exc))
            else:
                log.warning("dropped %s for %s: %s", type(item).__name__, _dst(item), exc)

    def deliver_nowait(self, item: Envelope | Reply) -> None:
        """`deliver` without waiting: the link reader's fast path.

        Raises:
            trio.WouldBlock: the way on (an inbox, a link, or the way back for the error
                answering an undeliverable request) is full. Nothing was delivered:
                `await deliver(item)` does it, waiting.
            ActorNotFound: the error answering a request could not be routed either.
        """
        try:
            if type(item) is Envelope and item.dst.node == self.name:
                inbox = self._inboxes.get(item.dst.name)
                if inbox is not None:
                    inbox.send_nowait(item)  # the common case, without the layers below
                    return
            self._route_nowait(item)
        except _UNDELIVERABLE as exc:
            if type(item) is Envelope and item.corr:
                self._route_nowait(_refusal(item, exc))
            else:
                log.warning("dropped %s for %s: %s", type(item).__name__, _dst(item), exc)

    def attach_link(self, link: Link) -> None:
        """Route messages for `link.peer` through `link`; an older link to the same peer
        that is still open is kept aside, and routed through again when this one goes."""
        older = self._links.get(link.peer)
        if older is not None:
            self._older_links.setdefault(link.peer, []).append(older)
        self._links[link.peer] = link

    def detach_link(self, link: Link) -> None:
        """Stop routing through `link` (an older open link to its peer takes over, if
        any); fail calls waiting on its peer, whose answers may have been lost with it."""
        older = self._older_links.get(link.peer, [])
        if link in older:
            older.remove(link)
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
            if older:
                self._links[link.peer] = older.pop()
            else:
                for listener in list(self._peer_lost):
                    listener(link.peer)
            lost = [corr for corr, p in self._pending.items() if p.dst_node == link.peer]
            for corr in lost:
                pending = self._settle(corr)
                assert pending is not None
                pending.error = ActorNotFound(f"connection to node {link.peer!r} lost")

    def on_peer_lost(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(peer)` whenever the last link to a peer closes (in the trio
        thread, synchronously: it must not block). Returns the unsubscribe function."""
        self._peer_lost.append(listener)
        return lambda: self._peer_lost.remove(listener)

    def connected_nodes(self) -> list[str]:
        """Names of the nodes with a link attached."""
        return sorted(self._links)


def _outcome(dst: Address, msg: Any, timeout_s: float, pending: _Pending) -> Any:
    """What a settled call returns or raises."""
    if pending.timed_out:
        raise CallTimeout(f"no reply from {dst} within {timeout_s:g}s to {type(msg).__name__}")
    if pending.error is not None:
        raise pending.error
    reply = pending.reply
    if isinstance(reply, ErrorReply):
        raise RemoteActorError(reply.type_name, reply.message, reply.traceback)
    expected = reply_type(type(msg)) if isinstance(msg, Command) else None
    if expected is not None and not isinstance(reply, expected):
        raise RemoteProtocolError(f"{dst} answered {type(msg).__name__} with "
                                  f"{type(reply).__name__}")
    return reply


#: Why an item may not reach its actor: answered with an error when it is a request.
_UNDELIVERABLE = (ActorNotFound, trio.BrokenResourceError, trio.ClosedResourceError)


def _refusal(request: Envelope, exc: BaseException) -> Reply:
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        exc = ActorNotFound(f"actor {request.dst} is not running")
    return Reply(request.src.node if request.src else "", request.corr, error_reply(exc))


def _dst(item: Envelope | Reply) -> str:
    return str(item.dst) if isinstance(item, Envelope) else f"node {item.dst_node}"


def error_reply(exc: BaseException) -> ErrorReply:
    """Describe an exception as text for the wire."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorReply(type(exc).__name__, str(exc), text[-8000:])


@asynccontextmanager
async def open_node(name: str, world: World | None = None) -> AsyncIterator[Node]:
    """Open a node; every actor started on it stops when the block exits.

    A supervised actor that gives up (`SupervisorGaveUp`) fails the whole block.
    """
    if not name or len(name) > 200:
        raise ValueError(f"node name must be 1-200 characters: {name!r}")
    async with trio.open_nursery() as nursery:
        node = Node(name, world or real_world(), nursery)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
