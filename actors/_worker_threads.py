"""Threads of sync tasks: an abandoned thread never costs the pool a slot.

Rules of this module:
- A sync task runs in a thread under the pool's `CapacityLimiter`. A timeout or a
  cancellation abandons the thread (Python cannot kill one), and trio keeps its limiter
  token until the thread returns. So an abandoned thread is replaced: the limiter gets
  one more token, and gives it back when that thread finally returns.
- Replacement is bounded: at most `replace_max` abandoned threads are replaced at once;
  past that the pool shrinks again, and the node reports itself degraded
  (`ThreadBook.degraded`, shown by `gotask nodes` as `threads_abandoned` and
  `degraded`). Code that can hang in C belongs in a separate process (see
  docs/guarantees.md).
- `abandon` and `returned` are called in the trio thread; a thread's end is reported to
  it through trio's token. A lock orders a thread ending against its being abandoned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import trio

__all__ = ["ThreadBook", "run_in_thread"]


@attrs.define(eq=False)
class _Thread:
    """One sync call: whether it returned, whether it was abandoned and replaced."""

    lock: threading.Lock = attrs.Factory(threading.Lock)
    done: bool = False
    abandoned: bool = False
    replaced: bool = False


@attrs.define(eq=False)
class ThreadBook:
    """The thread limiter of one worker pool and its abandoned threads."""

    limiter: trio.CapacityLimiter
    replace_max: int
    #: Abandoned threads still running now.
    abandoned: int = 0
    #: Of those, how many got a replacement token.
    replaced: int = 0

    @property
    def degraded(self) -> bool:
        """More threads are stuck than can be replaced: the pool runs short."""
        return self.abandoned > self.replace_max

    def info(self) -> dict[str, Any]:
        """What `gotask nodes` shows of the pool's threads."""
        return {"threads_abandoned": self.abandoned, "degraded": self.degraded}

    def abandon(self, thread: _Thread) -> None:
        with thread.lock:
            if thread.done:
                return
            thread.abandoned = True
        self.abandoned += 1
        if self.replaced < self.replace_max:
            thread.replaced = True
            self.replaced += 1
            self.limiter.total_tokens += 1

    def returned(self, thread: _Thread) -> None:
        self.abandoned -= 1
        if thread.replaced:
            self.replaced -= 1
            self.limiter.total_tokens -= 1


async def run_in_thread(book: ThreadBook, fn: Callable[[], Any]) -> Any:
    """`fn()` in a thread under the book's limiter; abandoned (and replaced) on cancel."""
    thread = _Thread()
    token = trio.lowlevel.current_trio_token()

    def body() -> Any:
        try:
            return fn()
        finally:
            with thread.lock:
                thread.done = True
                abandoned = thread.abandoned
            if abandoned:
                try:
                    trio.from_thread.run_sync(book.returned, thread, trio_token=token)
                except trio.RunFinishedError:
                    pass  # the node stopped meanwhile: nothing left to give back

    try:
        return await trio.to_thread.run_sync(body, limiter=book.limiter,
                                             abandon_on_cancel=True)
    except trio.Cancelled:
        book.abandon(thread)
        raise
