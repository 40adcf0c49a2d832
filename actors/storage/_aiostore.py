"""A store reached through the asyncio thread bridge (Redis, PostgreSQL) under the shell.

Rules of this module:
- An `AioStore` is the asyncio side of a shared store: `execute(cmds, now, jitter)` runs
  a batch and returns one result per command (a `LeaseJobs` answered with `Leased`, see
  `_backend`), `next_events(jitter)` waits for what any node did, `close()` ends it.
  It lives in one `AioThread`: created, used and closed in that loop.
- `AioStorage` is such a store opened in its thread; the node keeps it across restarts
  of the storage actor, like the memory core. `run_aio_storage` runs the one storage
  shell (`actor.run_storage`) over it: each batch crosses into the thread once and
  back once, up to `INFLIGHT_MAX` batches at once; the store's events are the shell's
  wake-ups. `jitter` (from the node's World) spreads reconnections across nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from gotask.runtime import ActorContext
from gotask.runtime._aiothread import AioThread, Pending

from ._backend import StorageEvents
from .actor import run_storage

__all__ = ["INFLIGHT_MAX", "AioStorage", "AioStore", "run_aio_storage"]

#: Most batches in the store at once.
INFLIGHT_MAX = 4


class AioStore(Protocol):
    """The asyncio side of a shared store; see the module rules."""

    async def execute(self, cmds: list[Any], now: float | None = None,
                      jitter: float = 1.0) -> list[Any]:
        """Run a batch; one reply or exception per command."""
        ...

    async def next_events(self, jitter: float = 1.0) -> StorageEvents:
        """Wait for events; return all that arrived."""
        ...

    async def close(self) -> None:
        """Close the connections."""
        ...


SettingsT = TypeVar("SettingsT")
StoreT = TypeVar("StoreT", bound=AioStore)


@attrs.define(eq=False)
class AioStorage(Generic[SettingsT, StoreT]):
    """A connected store and the asyncio thread it lives in."""

    settings: SettingsT
    aio: AioThread
    backend: StoreT

    async def aclose(self) -> None:
        """Close the connections, then stop the thread."""
        try:
            await self.aio.call(self.backend.close)
        finally:
            await self.aio.aclose()


@attrs.define(eq=False)
class _ShellBackend:
    """An `AioStorage` as the shell's `StorageBackend` (see `_backend`)."""

    storage: AioStorage[Any, AioStore]
    jitter: Callable[[], float]
    shared = True
    own_clock = True
    inflight_max = INFLIGHT_MAX

    def submit(self, cmds: list[Any], now: float | None) -> Pending[list[Any]]:
        """Send `cmds` to the store now, as one batch."""
        storage = self.storage
        return storage.aio.submit(storage.backend.execute, cmds, now, self.jitter())

    async def next_events(self) -> StorageEvents:
        """Wait for the store's events."""
        storage = self.storage
        return await storage.aio.call(storage.backend.next_events, self.jitter())


async def run_aio_storage(
    ctx: ActorContext,
    *,
    storage: AioStorage[Any, Any],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with the store of `storage`."""
    world = ctx.node.world
    backend = _ShellBackend(storage, lambda: world.jitter(0.5, 1.5))
    await run_storage(ctx, backend=backend, task_status=task_status)
