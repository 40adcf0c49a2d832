"""One-for-one supervision with a restart intensity (OTP rules on a trio nursery).

Rules of this module:
- A child that raises `Exception` is restarted with the same inbox, so messages still
  queued survive the crash. The batch it was handling is lost: a caller waiting on one
  of those messages gets `CallTimeout`, as with a lost message on the network.
  `Cancelled` and other `BaseException`s are never caught.
- More than `intensity` crashes within `period_s` seconds (trio's clock) and the
  supervisor raises `SupervisorGaveUp` naming the child and its last error: the node
  fails loudly rather than limping on.
- Every crash is logged with its traceback; nothing is logged and dropped.
- A child that returns normally is finished and is not restarted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from gotask._errors import SupervisorGaveUp

if TYPE_CHECKING:
    from gotask.runtime.node import Node

__all__ = ["ChildSpec", "supervise"]

log = logging.getLogger("gotask.supervisor")


@attrs.frozen
class ChildSpec:
    """How to start and restart one supervised actor."""

    name: str
    run: Callable[..., Awaitable[None]]
    inbox_max: int = 1024
    intensity: int = 3
    period_s: float = 5.0


async def supervise(
    node: Node,
    spec: ChildSpec,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `spec`'s actor on `node`, restarting it on crashes within its intensity.

    Reports ready when the first incarnation of the child reports ready.
    """
    from gotask.runtime.actor import ActorContext

    inbox = node.open_inbox(spec.name, spec.inbox_max)
    ctx = ActorContext(node, node.address(spec.name), inbox)
    crashes: deque[float] = deque()
    ready = _Readiness(task_status)
    try:
        while True:
            try:
                await spec.run(ctx, task_status=ready)
                return
            except Exception as exc:
                _after_crash(spec, crashes, _leaf(exc))
    finally:
        node.close_inbox(spec.name)


@attrs.define
class _Readiness:
    """Passes the first incarnation's readiness on; later restarts report to no one."""

    outer: trio.TaskStatus[None]
    fired: bool = False

    def started(self, value: None = None) -> None:
        if not self.fired:
            self.fired = True
            self.outer.started()


def _leaf(exc: Exception) -> Exception:
    # A child's own nursery wraps its error in a group; report the single cause.
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _after_crash(
    spec: ChildSpec,
    crashes: deque[float],
    exc: Exception,
) -> None:
    now = trio.current_time()
    crashes.append(now)
    while crashes and crashes[0] < now - spec.period_s:
        crashes.popleft()
    if len(crashes) > spec.intensity:
        raise SupervisorGaveUp(spec.name, len(crashes), spec.period_s, exc) from exc
    log.error("actor %r crashed; restarting (%d within %gs)", spec.name, len(crashes),
              spec.period_s, exc_info=exc)
