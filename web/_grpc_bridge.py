"""Calls from gRPC handlers (asyncio, in an `AioThread`) into the node (trio), in batches.

Rules of this module:
- The gRPC server's handlers run in the loop of an `AioThread`; the node runs in trio.
  A handler hands the bridge a trio coroutine function: `run` for one result, `stream`
  for a function that emits items. The loop never touches a trio object and trio never
  touches an asyncio one: every crossing is an `AioThread.call`.
- `serve` (a trio task in the node's nursery) asks the loop for every request queued
  since its last ask, one crossing per batch, and starts each in a task of its own.
  Results and streamed items are gathered and handed back to the loop, again one
  crossing per batch.
- A handler that is cancelled (the client went away, its deadline passed) queues a
  cancel of its request the same way; the trio task's scope is cancelled, so nothing it
  holds outlives the call. `statistics()` counts the requests running in trio.
- A stream keeps at most `items_max` items the handler has not sent yet; past that the
  oldest is dropped (a watcher wants the newest record; the last one is never dropped).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from gotask.runtime._aiothread import AioThread

__all__ = ["Bridge", "BridgeStatistics", "Emit"]

T = TypeVar("T")
#: What a streaming function calls (in trio) for each item it produces.
Emit = Callable[[Any], None]
ITEMS_MAX: Final = 64


@attrs.define(eq=False)
class _Items:
    """A stream's items on their way to its handler (touched in the loop only)."""

    queue: deque[Any]
    ready: asyncio.Event = attrs.Factory(asyncio.Event)
    end: outcome.Outcome[Any] | None = None


@attrs.define(eq=False)
class _Request:
    """A call queued by a handler; `fn` None cancels request `key`."""

    key: int
    fn: Callable[..., Awaitable[Any]] | None
    args: tuple[Any, ...] = ()
    future: asyncio.Future[Any] | None = None
    items: _Items | None = None


@attrs.frozen
class BridgeStatistics:
    """Requests running in trio now."""

    running: int


class Bridge:
    """Hands handlers' calls to trio in batches; see the module rules."""

    def __init__(self, aio: AioThread, items_max: int = ITEMS_MAX) -> None:
        self._aio = aio
        self._items_max = items_max
        self._keys = itertools.count(1)
        self._queued: list[_Request] = []  # the loop's
        self._queued_ready = asyncio.Event()  # the loop's
        self._scopes: dict[int, trio.CancelScope] = {}  # trio's
        self._done: list[tuple[_Request, outcome.Outcome[Any] | None, Any]] = []  # trio's
        self._done_ready: trio.Event | None = None  # trio's

    def statistics(self) -> BridgeStatistics:
        """How many requests run in trio now (call from trio)."""
        return BridgeStatistics(running=len(self._scopes))

    # -- the loop's side ------------------------------------------------------------------

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` in trio and return its result (or raise its error)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        request = _Request(next(self._keys), fn, args, future=future)
        self._queue(request)
        try:
            return await future
        except asyncio.CancelledError:
            self._queue(_Request(request.key, None))
            raise

    async def stream(self, fn: Callable[..., Awaitable[None]], *args: Any) -> AsyncIterator[Any]:
        """Run `await fn(emit, *args)` in trio; yield what it emits until it returns."""
        items = _Items(deque(maxlen=self._items_max))
        request = _Request(next(self._keys), fn, args, items=items)
        self._queue(request)
        try:
            while True:
                while items.queue:
                    yield items.queue.popleft()
                if items.end is not None:
                    items.end.unwrap()
                    return
                items.ready.clear()
                await items.ready.wait()
        finally:
            if items.end is None:
                self._queue(_Request(request.key, None))

    def _queue(self, request: _Request) -> None:
        self._queued.append(request)
        self._queued_ready.set()

    async def _next_batch(self) -> list[_Request]:
        while not self._queued:
            self._queued_ready.clear()
            await self._queued_ready.wait()
        batch, self._queued = self._queued, []
        return batch

    async def _deliver(self, batch: list[tuple[_Request, outcome.Outcome[Any] | None, Any]]
                       ) -> None:
        for request, result, item in batch:
            if request.future is not None:
                if result is not None and not request.future.done():
                    _settle_future(request.future, result)
            elif request.items is not None:
                if result is None:
                    request.items.queue.append(item)
                else:
                    request.items.end = result
                request.items.ready.set()

    # -- trio's side ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Take requests from the loop and run them until cancelled."""
        self._done_ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hand_back)
            task_status.started()
            while True:
                for request in await self._aio.call(self._next_batch):
                    if request.fn is None:
                        scope = self._scopes.get(request.key)
                        if scope is not None:
                            scope.cancel()
                    else:
                        self._scopes[request.key] = trio.CancelScope()
                        nursery.start_soon(self._run_one, request)

    async def _run_one(self, request: _Request) -> None:
        assert request.fn is not None
        args = request.args
        if request.items is not None:
            args = (functools.partial(self._emit, request), *args)
        result: outcome.Outcome[Any] | None = None
        try:
            with self._scopes[request.key]:
                try:
                    result = outcome.Value(await request.fn(*args))
                except Exception as exc:
                    result = outcome.Error(exc)
        finally:
            del self._scopes[request.key]
        if result is not None:  # else its handler cancelled it: nobody waits
            self._finish(request, result, None)

    def _emit(self, request: _Request, item: Any) -> None:
        self._finish(request, None, item)

    def _finish(self, request: _Request, result: outcome.Outcome[Any] | None, item: Any) -> None:
        self._done.append((request, result, item))
        assert self._done_ready is not None
        self._done_ready.set()

    async def _hand_back(self) -> None:
        while True:
            assert self._done_ready is not None
            await self._done_ready.wait()
            self._done_ready = trio.Event()
            batch, self._done = self._done, []
            await self._aio.call(self._deliver, batch)


def _settle_future(future: asyncio.Future[Any], result: outcome.Outcome[Any]) -> None:
    if isinstance(result, outcome.Value):
        future.set_result(result.value)
    else:
        assert isinstance(result, outcome.Error)
        future.set_exception(result.error)
