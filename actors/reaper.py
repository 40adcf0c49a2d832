"""The Reaper: requeues expired leases, purges old results, keeps the node registry.

Rules of this module:
- Every `interval_s`: `RequeueExpired` (a lease that expired counts as a failed attempt;
  exhausted jobs go to the DLQ), `PurgeExpired` (finished jobs past their result TTL),
  `RegisterNode` for this node (liveness for `gotask nodes`) and `ExpireNodes`.
- Lease expiry is judged by the storage clock, never by this node's.
- Several nodes may run a Reaper on one storage: each operation is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from gotask._errors import ActorError
from gotask.runtime import ActorContext, Address

from .storage.base import (
    ExpireNodes,
    PurgeExpired,
    RegisterNode,
    RequeueExpired,
    RequeueExpiredReply,
)

__all__ = ["run_reaper"]

log = logging.getLogger("gotask.reaper")
REAP_LIMIT = 1000


async def run_reaper(
    ctx: ActorContext,
    *,
    storage: Address,
    node_info: Callable[[], dict[str, Any]],
    interval_s: float = 1.0,
    node_ttl_s: float = 15.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reap every `interval_s` seconds; register this node with a `node_ttl_s` liveness."""
    task_status.started()
    while True:
        try:
            await _reap_once(ctx, storage, node_info(), node_ttl_s)
        except (ActorError, trio.BrokenResourceError) as exc:
            log.warning("reaping at %s failed: %s", storage, exc)
        await trio.sleep(interval_s)


async def _reap_once(
    ctx: ActorContext, storage: Address, info: dict[str, Any], node_ttl_s: float
) -> None:
    await ctx.call(storage, RegisterNode(ctx.node.name, info, node_ttl_s))
    while True:
        reply = await ctx.call(storage, RequeueExpired(REAP_LIMIT))
        assert isinstance(reply, RequeueExpiredReply)
        if reply.dead:
            log.warning("jobs moved to the dead-letter queue after lease expiry: %s",
                        ", ".join(reply.dead[:10]))
        if len(reply.requeued) + len(reply.dead) + len(reply.cancelled) < REAP_LIMIT:
            break
    await ctx.call(storage, PurgeExpired(REAP_LIMIT))
    await ctx.call(storage, ExpireNodes())
