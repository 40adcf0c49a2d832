"""The Redis storage actor: the storage contract on a Redis shared by every node.

Rules of this module:
- `open_redis_storage(url)` connects (in its own asyncio thread, `_aiothread`) and
  checks the server; the node keeps the returned `RedisStorage` across restarts of
  the actor, like the memory core. `run_redis_storage` runs the one storage shell
  over it through the asyncio thread bridge (`_aiostore`): parking, watch pushes,
  error answers and cancel pushes are the shell's.
- Everything a batch needs from Redis crosses into the asyncio thread in ONE call and
  comes back in one. Redis runs it as one pipeline of Lua scripts (`_redis_scripts`),
  each atomic, in order; the storage clock is Redis `TIME`, read inside each script.
  Up to `_aiostore.INFLIGHT_MAX` batches are in Redis at once.
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

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from gotask.runtime import ActorContext
from gotask.runtime._aiothread import AioThread

from ._aiostore import AioStorage, run_aio_storage
from ._redis_backend import RedisBackend, RedisSettings

__all__ = [
    "RedisSettings",
    "RedisStorage",
    "delete_prefix",
    "open_redis_storage",
    "run_redis_storage",
    "with_prefix",
]

class RedisStorage(AioStorage[RedisSettings, RedisBackend]):
    """A connected Redis backend and the asyncio thread it lives in."""


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


async def run_redis_storage(
    ctx: ActorContext,
    *,
    storage: RedisStorage,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with the Redis backend of `storage`."""
    await run_aio_storage(ctx, storage=storage, task_status=task_status)
