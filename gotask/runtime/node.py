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
  waiting on that node fail at once with `ActorNotFound`.
"""

from __future__ import annotations

import itertools
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from gotask._errors import ActorNotFound, CallTimeout, RemoteActorError
from gotask.runtime.message import Address, Envelope, ErrorReply, Reply
from gotask.runtime.world import World, real_world

__all__ = ["CALL_TIMEOUT_S", "INBOX_MAX", "Link", "Node", "open_node"]

log = logging.getLogger("gotask.runtime")

INBOX_MAX = 1024
CALL_TIMEOUT_S = 10.0
CALLER_NAME = "$call"


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


@attrs.define
class _Pending:
    dst_node: str
    done: trio.Event = attrs.Factory(trio.Event)
    reply: Any = None
    error: BaseException | None = None


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
    _pending: dict[int, _Pending] = attrs.Factory(dict)
    _corr: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

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
            ActorNotFound: no such actor, or its node is not connected.
        """
        self._route_nowait(Envelope(dst, src, 0, msg))

    async def send(self, dst: Address, msg: Any, *, src: Address | None = None) -> None:
        """Send, waiting only while the destination is full (backpressure)."""
        await self._route(Envelope(dst, src, 0, msg))

    async def call(
        self,
        dst: Address,
        msg: Any,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> Any:
        """Send a request and return the reply.

        Raises:
            CallTimeout: no reply within `timeout_s` seconds.
            RemoteActorError: the actor raised while handling the request.
            ActorNotFound: no such actor, or its node is (or became) unreachable.
        """
        corr = next(self._corr)
        pending = _Pending(dst.node)
        self._pending[corr] = pending
        try:
            # The timeout covers sending too: a full inbox or link is a slow peer.
            with trio.move_on_after(timeout_s):
                await self._route(Envelope(dst, Address(self.name, CALLER_NAME), corr, msg))
                await pending.done.wait()
        finally:
            del self._pending[corr]
        if not pending.done.is_set():
            raise CallTimeout(f"no reply from {dst} within {timeout_s:g}s to {type(msg).__name__}")
        if pending.error is not None:
            raise pending.error
        if isinstance(pending.reply, ErrorReply):
            err = pending.reply
            raise RemoteActorError(err.type_name, err.message, err.traceback)
        return pending.reply

    def reply_nowait(self, request: Envelope, msg: Any) -> None:
        """Answer a request received in an inbox (no-op for a plain send)."""
        if request.corr and request.src is not None:
            self._route_nowait(Reply(request.src.node, request.corr, msg))

    async def reply(self, request: Envelope, msg: Any) -> None:
        """Answer a request, waiting while the way back is full."""
        if request.corr and request.src is not None:
            await self._route(Reply(request.src.node, request.corr, msg))

    async def reply_error(self, request: Envelope, exc: BaseException) -> None:
        """Answer a request with an error: type name and traceback text, never pickled."""
        await self.reply(request, error_reply(exc))

    # -- routing ---------------------------------------------------------------------

    def _route_nowait(self, item: Envelope | Reply) -> None:
        node = item.dst.node if isinstance(item, Envelope) else item.dst_node
        if node == self.name:
            self._deliver_local_nowait(item)
        else:
            self._link_to(node).send_nowait(item)

    async def _route(self, item: Envelope | Reply) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._route_nowait(item)
        except trio.WouldBlock:
            node = item.dst.node if isinstance(item, Envelope) else item.dst_node
            if node == self.name:
                assert isinstance(item, Envelope)
                await self._inbox_of(item).send(item)
            else:
                await self._link_to(node).send(item)

    def _deliver_local_nowait(self, item: Envelope | Reply) -> None:
        if isinstance(item, Reply):
            self._resolve(item)
        else:
            self._inbox_of(item).send_nowait(item)

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
        pending = self._pending.get(reply.corr)
        if pending is None:
            log.debug("late reply %d on %s dropped (the call timed out)", reply.corr, self.name)
            return
        pending.reply = reply.msg
        pending.done.set()

    # -- transports ------------------------------------------------------------------

    async def deliver(self, item: Envelope | Reply) -> None:
        """Take an item that arrived from a link: deliver it here or relay it.

        A request for an actor that does not exist is answered with an error; a plain
        message for one is logged and dropped (there is no one to tell).
        """
        try:
            await self._route(item)
        except ActorNotFound as exc:
            if isinstance(item, Envelope) and item.corr:
                await self._route(Reply(item.src.node if item.src else "", item.corr,
                                        error_reply(exc)))
            else:
                log.warning("dropped %s for %s: %s", type(item).__name__, _dst(item), exc)

    def attach_link(self, link: Link) -> None:
        """Route messages for `link.peer` through `link` (replacing an older link)."""
        self._links[link.peer] = link

    def detach_link(self, link: Link) -> None:
        """Stop routing through `link`; fail calls waiting on its peer."""
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
            for pending in self._pending.values():
                if pending.dst_node == link.peer and not pending.done.is_set():
                    pending.error = ActorNotFound(f"connection to node {link.peer!r} lost")
                    pending.done.set()

    def connected_nodes(self) -> list[str]:
        """Names of the nodes with a link attached."""
        return sorted(self._links)


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
