"""The Redis storage actor: the storage contract on a Redis shared by every node.

Rules of this module:
- `open_redis_storage(url)` connects (in its own asyncio thread, `_aiothread`) and
  checks the server; the node keeps the returned `RedisStorage` across restarts of
  the actor, like the memory core. `run_redis_storage` runs the one storage shell
  (`actor.run_storage`) over it: parking, watch pushes, error answers and cancel
  pushes are the shell's.
- Everything a batch needs from Redis crosses into the asyncio thread in ONE call and
  comes back in one. Redis runs it as one pipeline of Lua scripts (`_redis_scripts`),
  each atomic, in order; the storage clock is Redis `TIME`, read inside each script.
  Up to `INFLIGHT_MAX` batches are in Redis at once.
- Events: every script that changes jobs publishes on the events channel; the shell
  waits on the subscription (`next_events`, a blocking read, no polling). Events name
  the queues made ready (with the storage time), due times, changed jobs that a
  watcher flagged with a `WatchRead`, and cancellations; so watchers and dispatchers
  on any node see changes made by any node's storage actor.
- A lost subscription is remade, and reported (`resubscribed`): parked leases and
  watched jobs are then looked at again, since events may have been missed.
- A failed command is answered with its error (`StorageUnavailable` while Redis is
  unreachable, see `_redis_backend`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio

from gotask.runtime import ActorContext

from ._aiothread import AioThread, Pending
from ._backend import StorageEvents
from ._redis_backend import RedisBackend, RedisSettings
from .actor import run_storage

__all__ = [
    "RedisSettings",
    "RedisStorage",
    "delete_prefix",
    "open_redis_storage",
    "run_redis_storage",
    "with_prefix",
]

#: Most batches in Redis at once.
INFLIGHT_MAX = 4

@attrs.define(eq=False)
class RedisStorage:
    """A connected Redis backend and the asyncio thread it lives in."""

    settings: RedisSettings
    aio: AioThread
    backend: RedisBackend

    async def aclose(self) -> None:
        """Close the connections, then stop the thread."""
        try:
            await self.aio.call(self.backend.close)
        finally:
            await self.aio.aclose()


async def open_redis_storage(url: str) -> RedisStorage:
    """Connect to the Redis at `url` (`redis://host:port/db?prefix=P`).

    Raises:
        ConfigError: a malformed URL.
        StorageUnavailable: Redis cannot be reached.
        StorageError: Redis may evict keys (maxmemory-policy allkeys-*).
    """
    settings = RedisSettings.from_url(url)
    aio = AioThread("gotask-redis")
    backend = RedisBackend(settings)
    try:
        await aio.call(backend.open)
    except BaseException:
        await aio.aclose()
        raise
    return RedisStorage(settings, aio, backend)


def with_prefix(url: str, prefix: str) -> str:
    """`url` with its key prefix replaced by `prefix`."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def delete_prefix(url: str) -> int:
    """Delete every key under the URL's prefix (tests, benchmarks); returns how many.

    Synchronous and slow (SCAN): never on a hot path.
    """
    import redis

    settings = RedisSettings.from_url(url)
    client = redis.Redis.from_url(settings.url)
    try:
        keys = list(client.scan_iter(match=f"{settings.prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i:i + 1000])
        return len(keys)
    finally:
        client.close()


# -- the actor ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _RedisShellBackend:
    """`RedisStorage` as the shell's `StorageBackend`; `jitter` spreads reconnections."""

    storage: RedisStorage
    jitter: Callable[[], float]
    shared = True
    own_clock = True
    inflight_max = INFLIGHT_MAX

    def submit(self, cmds: list[Any], now: float | None) -> Pending[list[Any]]:
        """Send `cmds` to Redis now, as one pipeline."""
        storage = self.storage
        return storage.aio.submit(storage.backend.execute, cmds, now, self.jitter())

    async def next_events(self) -> StorageEvents:
        """Wait for events on the subscription."""
        storage = self.storage
        return await storage.aio.call(storage.backend.next_events, self.jitter())


async def run_redis_storage(
    ctx: ActorContext,
    *,
    storage: RedisStorage,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with the Redis backend of `storage`."""
    world = ctx.node.world
    backend = _RedisShellBackend(storage, lambda: world.jitter(0.5, 1.5))
    await run_storage(ctx, backend=backend, task_status=task_status)
