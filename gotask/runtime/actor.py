"""What an actor sees of the runtime: its address, its inbox, and ways to talk.

Rules of this module:
- An actor's shell receives `ActorContext`, drains its inbox in batches
  (`await ctx.receive_batch()`), hands each message to its pure core, and sends what the
  core returns. The core never awaits, reads no clock and draws no random number.
- A core returns `Outgoing` values: `Send(dst, msg)` or `Respond(request, msg)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar, overload

import attrs
import trio

from gotask.runtime.message import Address, Command, Envelope
from gotask.runtime.node import CALL_TIMEOUT_S, Node

__all__ = ["BATCH_MAX", "ActorContext", "Outgoing", "Respond", "Send"]

BATCH_MAX = 256
R = TypeVar("R")


@attrs.frozen
class Send:
    """Outgoing: send `msg` to `dst` without waiting for a reply."""

    dst: Address
    msg: Any


@attrs.frozen
class Respond:
    """Outgoing: answer the request `request` with `msg`."""

    request: Envelope
    msg: Any


Outgoing = Send | Respond


@attrs.define(eq=False)
class ActorContext:
    """The runtime as one actor sees it."""

    node: Node
    address: Address
    inbox: trio.MemoryReceiveChannel[Envelope]

    async def receive_batch(self, batch_max: int = BATCH_MAX) -> list[Envelope]:
        """Wait for at least one message, then take everything ready (up to `batch_max`).

        Raises:
            trio.EndOfChannel: the inbox was closed.
        """
        batch = [await self.inbox.receive()]
        receive_nowait = self.inbox.receive_nowait
        try:
            while len(batch) < batch_max:
                batch.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        return batch

    async def receive_until(self, deadline: float, batch_max: int = BATCH_MAX) -> list[Envelope]:
        """`receive_batch`, or [] once `deadline` (trio clock) passes with nothing come.

        No deadline (`math.inf`) costs no cancel scope, which costs more than a message.
        """
        if deadline == math.inf:
            return await self.receive_batch(batch_max)
        with trio.move_on_at(deadline):
            return await self.receive_batch(batch_max)
        return []

    async def send(self, dst: Address, msg: Any) -> None:
        """Send `msg` to `dst` from this actor (waits only on backpressure)."""
        await self.node.send(dst, msg, src=self.address)

    def send_nowait(self, dst: Address, msg: Any) -> None:
        """Send without waiting; raises `trio.WouldBlock` when `dst` is full."""
        self.node.send_nowait(dst, msg, src=self.address)

    @overload
    async def call(self, dst: Address, msg: Command[R], *,
                   timeout_s: float = CALL_TIMEOUT_S) -> R: ...

    @overload
    async def call(self, dst: Address, msg: Any, *, timeout_s: float = CALL_TIMEOUT_S) -> Any: ...

    async def call(self, dst: Address, msg: Any, *, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """Request/response with another actor; see `Node.call` (a `Command[R]` gives an R)."""
        return await self.node.call(dst, msg, timeout_s=timeout_s)

    async def reply(self, request: Envelope, msg: Any) -> None:
        """Answer `request` (no-op if it was a plain send)."""
        await self.node.reply(request, msg)

    async def dispatch(self, outgoing: Iterable[Outgoing]) -> None:
        """Send everything a core returned, in order."""
        for out in outgoing:
            if isinstance(out, Send):
                await self.node.send(out.dst, out.msg, src=self.address)
            else:
                await self.node.reply(out.request, out.msg)
