"""An asyncio event loop in its own thread, reached from trio in batches.

Rules of this module:
- `AioThread` owns one asyncio loop (uvloop where available) running in a daemon
  thread. Every asyncio object a caller uses (clients, connections, pub/sub) is created,
  used and closed inside that loop: hand it coroutine functions, never objects to use
  from trio.
- `submit(fn, *args)` / `call(fn, *args)` cross once each way: one
  `call_soon_threadsafe` into the loop, one `run_sync_soon` back to trio. Callers
  batch: a storage actor crosses once per inbox batch, not once per command. Calls
  start in the loop in the order they were submitted.
- Cancelling the trio waiter cancels the asyncio task and waits for it to finish, so a
  connection is never left halfway through a command.
- `aclose()` stops the loop and joins the thread; close the asyncio objects first
  (with a last `call`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import outcome
import trio

__all__ = ["AioThread", "Pending", "new_loop"]

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio event loop: uvloop's when installed, the standard one otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class AioThread:
    """An asyncio loop in a daemon thread; see the module rules.

    Args:
        name: the thread's name (shows in debuggers and thread dumps).
    """

    def __init__(self, name: str = "gotask-aio") -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Pending[T]:
        """Start `fn(*args)` in the loop now; `await pending.wait()` for its result.

        Calls submitted one after another start in the loop in that order.
        """
        return Pending(self.loop, fn(*args))

    async def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `fn(*args)` in the loop and return its result (or raise its error)."""
        return await self.submit(fn, *args).wait()

    async def aclose(self) -> None:
        """Stop the loop and wait for its thread to end."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            await trio.to_thread.run_sync(self._thread.join)


class Pending(Generic[T]):
    """A coroutine running in an `AioThread`'s loop, awaited from trio."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> None:
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None
        self._task: asyncio.Task[T] | None = None
        loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:  # in the loop's thread
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:  # in the loop's thread
        result = (outcome.Error(asyncio.CancelledError()) if task.cancelled()
                  else outcome.capture(task.result))
        self._token.run_sync_soon(self._deliver, result)

    def _deliver(self, result: outcome.Outcome[T]) -> None:  # in trio
        self._outcome = result
        self._done.set()

    def _cancel(self) -> None:  # in the loop's thread; queued after _start
        assert self._task is not None
        self._task.cancel()

    async def wait(self) -> T:
        """The coroutine's result.

        Raises:
            trio.Cancelled: the waiter was cancelled; the asyncio task was cancelled
                too and has finished.
        """
        try:
            if not self._done.is_set():  # else no checkpoint: it costs a scheduling round
                await self._done.wait()
        except trio.Cancelled:
            self._loop.call_soon_threadsafe(self._cancel)
            with trio.CancelScope(shield=True):
                await self._done.wait()
            raise
        assert self._outcome is not None
        return self._outcome.unwrap()
