"""The Scheduler: makes delayed and retry jobs due on time.

Rules of this module:
- Every `interval_s` it asks storage to promote due `scheduled` jobs (`PromoteDue`),
  again at once while a full batch came back. Due times are judged by the storage clock.
- Several nodes may run a Scheduler against the same storage: promotion is idempotent.
- Cron entries (issue: recurring jobs) will live here too.
"""

from __future__ import annotations

import logging

import trio

from gotask._errors import ActorError
from gotask.runtime import ActorContext, Address

from .storage.base import PromoteDue, PromoteDueReply

__all__ = ["run_scheduler"]

log = logging.getLogger("gotask.scheduler")
PROMOTE_LIMIT = 1000


async def run_scheduler(
    ctx: ActorContext,
    *,
    storage: Address,
    interval_s: float = 0.2,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Promote due jobs every `interval_s` seconds."""
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        try:
            while True:
                reply = await ctx.call(storage, PromoteDue(PROMOTE_LIMIT))
                assert isinstance(reply, PromoteDueReply)
                if reply.promoted < PROMOTE_LIMIT:
                    break
        except (ActorError, trio.BrokenResourceError) as exc:
            log.warning("promoting due jobs at %s failed: %s", storage, exc)
