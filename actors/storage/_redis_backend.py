"""The asyncio side of the Redis backend: connections, script calls, events.

Rules of this module:
- Everything here runs inside the storage actor's asyncio thread (or a test's own
  loop): a `RedisBackend` is created, used and closed in one event loop.
- One connection carries commands; a batch of commands is one pipelined write of
  EVALSHA calls and one read of their answers (hiredis parses them). A second
  connection is subscribed to the events channel.
- The clock: `now=None` lets every script read Redis `TIME`; tests pass a pinned time.
- A broken connection is reopened with capped exponential backoff for up to `retry_s`
  seconds. Commands that may be resent (all but leases, see `_redis_codec`) are sent
  again, at most `SENDS_MAX` times in all; a lease whose outcome is unknown fails with
  `StorageUnavailable`. Past `retry_s` of unavailability every batch fails at once with
  `StorageUnavailable`, until a connection succeeds. Nothing is dropped silently.
- Redis errors become storage errors: NOSCRIPT reloads the script and sends again,
  OOM and node limits are `StorageFull`, anything else `StorageError` naming the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import msgpack
from hiredis import pack_command
from redis.asyncio.client import PubSub, Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gotask._errors import ConfigError, StorageError, StorageFull, StorageUnavailable

from ._backend import StorageEvents
from ._redis_codec import Plan, decode, encode
from ._redis_cron import CRON_SCRIPTS
from ._redis_queues import QUEUE_SCRIPTS
from ._redis_scripts import SCRIPTS as _JOB_SCRIPTS

__all__ = ["Events", "RedisBackend", "RedisSettings"]

log = logging.getLogger("gotask.storage.redis")
#: Every script the backend loads: the job lifecycle's, the cron block's (issue 15) and
#: the queue block's (issue 16).
SCRIPTS = {**_JOB_SCRIPTS, **CRON_SCRIPTS, **QUEUE_SCRIPTS}

CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 30.0
#: How long a batch keeps trying to reach Redis before failing with StorageUnavailable.
RETRY_S = 10.0
#: Most times a batch is sent (a connection lost mid-batch, a script to load again).
SENDS_MAX = 5
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 1.0
#: A subscriber idle this long pings Redis, so a dead connection is noticed.
PUBSUB_IDLE_S = 30.0
EVENTS_MAX = 1000
NODES_MAX = 10_000
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_OPTIONS: dict[str, Any] = {
    "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "socket_timeout": SOCKET_TIMEOUT_S, "health_check_interval": 0, "protocol": 2,
}


@attrs.frozen
class RedisSettings:
    """Where the Redis backend lives: `redis://[user:password@]host:port/db?prefix=P`.

    `url` is what redis-py gets (GoTask's own parameters removed), `display` is safe
    to log (no password), `prefix` starts every key.
    """

    url: str
    prefix: str
    display: str

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse a storage URL.

        Raises:
            ConfigError: not redis://, rediss:// or unix://, or a malformed prefix.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"not a Redis URL (redis://host:port/db): {redact(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = dict(query).get("prefix", "gotask")
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"prefix must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {prefix!r}")
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        plain = urlunsplit(parts._replace(query=rest))
        return cls(plain, prefix, redact(url))


def redact(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


#: The events of a shared store; this backend parses its channel into them.
Events = StorageEvents


def parse_events(payloads: list[bytes]) -> Events:
    """Merge raw event messages (see `_redis_scripts`) into one `Events`."""
    now: float | None = None
    ids: set[str] = set()
    ready: set[str] = set()
    due: list[tuple[str, float]] = []
    cancels: list[tuple[str, str, int]] = []
    for payload in payloads:
        at, ev_ids, ev_ready, ev_due, ev_cancel = msgpack.unpackb(payload, raw=False)
        now = float(at)
        ids.update(ev_ids)
        ready.update(ev_ready)
        due += ((ev_due[i], float(ev_due[i + 1])) for i in range(0, len(ev_due), 2))
        cancels += ((ev_cancel[i], ev_cancel[i + 1], int(ev_cancel[i + 2]))
                    for i in range(0, len(ev_cancel), 3))
    return Events(now, frozenset(ids), frozenset(ready), tuple(due), tuple(cancels))


class RedisBackend:
    """The storage contract over one Redis, for one asyncio loop; see the module rules.

    Args:
        settings: where Redis is and the key prefix.
        retry_s: how long a batch retries an unreachable Redis (seconds).
    """

    def __init__(self, settings: RedisSettings, retry_s: float = RETRY_S) -> None:
        self.settings = settings
        self.retry_s = retry_s
        self._pool = ConnectionPool.from_url(settings.url, **_OPTIONS)
        self._conn: Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._up = False
        self._down_since: float | None = None
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest()
                      for name, src in SCRIPTS.items()}
        self._pubsub: PubSub | None = None
        self._send_lock = asyncio.Lock()
        self._read_turn: asyncio.Future[None] | None = None
        self._generation = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self, *, subscribe: bool = True) -> None:
        """Connect, check the server's settings, load the scripts, subscribe to events.

        Raises:
            StorageUnavailable: Redis cannot be reached.
            StorageError: Redis may evict keys (`maxmemory-policy allkeys-*`).
            ConfigError: Redis refused the URL's settings (a database it does not have).
        """
        try:
            await self._conn.connect()  # type: ignore[no-untyped-call]
            await self._check_server()
            await self._load_scripts()
            if subscribe:
                await self._subscribe()
        except _BROKEN as exc:
            await self.close()
            raise StorageUnavailable(
                f"cannot reach Redis at {self.settings.display}: {exc}") from None
        except ResponseError as exc:  # e.g. a database number this Redis does not have
            await self.close()
            raise ConfigError(
                f"Redis at {self.settings.display} refused the connection: {exc} (check the "
                "database number and password in the --storage URL)") from None
        self._up = True

    async def close(self) -> None:
        """Close both connections."""
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        await self._conn.disconnect()
        await self._pool.aclose()

    async def _command(self, *args: Any) -> Any:
        await self._conn.send_command(*args)
        return await self._conn.read_response()

    async def _check_server(self) -> None:
        config = await self._config("maxmemory-policy", "appendonly", "appendfsync", "save")
        policy = config.get("maxmemory-policy", "")
        if policy.startswith("allkeys-"):
            raise StorageError(
                f"Redis at {self.settings.display} has maxmemory-policy {policy}: it may "
                "evict job keys and lose jobs. Set maxmemory-policy noeviction (docs/redis.md).")
        _warn_persistence(self.settings.display, config)

    async def _config(self, *names: str) -> dict[str, str]:
        await self._conn.send_packed_command(self._conn.pack_commands(
            [("CONFIG", "GET", name) for name in names]))
        config: dict[str, str] = {}
        for _ in names:
            try:
                pairs = await self._conn.read_response()
            except ResponseError:
                continue
            config.update((pairs[i].decode(), pairs[i + 1].decode())
                          for i in range(0, len(pairs), 2))
        return config

    async def _load_scripts(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else list(SCRIPTS):
            sha = await self._command("SCRIPT", "LOAD", SCRIPTS[name])
            assert sha.decode() == self._shas[name], name

    # -- commands -------------------------------------------------------------------------

    async def execute(self, cmds: list[Any], now: float | None = None,
                      jitter: float = 1.0) -> list[Any]:
        """Run a batch of storage commands; return each one's reply or exception.

        Batches may overlap (each is one pipelined write and one read, in call order).

        Args:
            now: the storage time to apply them at; None reads Redis `TIME`.
            jitter: factor (about 0.5-1.5) applied to reconnection delays.
        """
        results: list[Any] = [None] * len(cmds)
        plans = _encode_all(cmds, results)
        todo, resent, load = sorted(plans), False, set[str]()
        clock = "" if now is None else repr(float(now))
        for _ in range(SENDS_MAX):
            if not todo:
                return results
            loads = [("SCRIPT", "LOAD", SCRIPTS[name]) for name in sorted(load)]
            try:
                raw = await self._round_trip(
                    [*loads, *(self._evalsha(plans[i], clock) for i in todo)], jitter)
            except StorageUnavailable as exc:
                _fail(results, todo, exc)
                return results
            except _Lost as exc:
                todo = self._after_loss(exc, todo, plans, cmds, results)
                resent = True
                continue
            todo = self._settle(todo, raw[len(loads):], plans, cmds, results, resent)
            load = {plans[i].script for i in todo}
        _fail(results, todo, StorageUnavailable(
            f"Redis at {self.settings.display} did not run the commands in {SENDS_MAX} "
            "attempts (connection lost each time, or scripts not loaded)"))
        return results

    def _evalsha(self, plan: Plan, clock: str) -> tuple[Any, ...]:
        return ("EVALSHA", self._shas[plan.script], 0, self.settings.prefix, clock, *plan.args)

    async def _round_trip(self, commands: list[tuple[Any, ...]], jitter: float) -> list[Any]:
        """Write `commands` in one go, then read their answers (error replies included).

        Writes happen in call order under a lock; reads wait for the batches written
        before them, so overlapping batches share the connection safely.

        Raises:
            StorageUnavailable: no connection within `retry_s`.
            _Lost: the connection broke; the commands may or may not have run.
        """
        payload = b"".join([pack_command(c) for c in commands])
        generation, previous, mine = await self._write(payload, jitter)
        try:
            if previous is not None:
                await asyncio.shield(previous)
            if generation != self._generation:
                raise _Lost("the connection was reset after an earlier batch failed")
            return await self._read(len(commands))
        except _BROKEN as exc:
            raise await self._lose(generation, exc) from exc
        except BaseException as exc:
            await self._lose(generation, exc)
            raise
        finally:
            if not mine.done():
                mine.set_result(None)

    async def _write(self, payload: bytes, jitter: float) -> tuple[int, _Turn | None, _Turn]:
        """Write in call order; returns the connection's generation, the turn to read
        after, and this batch's turn (set once its answers are read)."""
        async with self._send_lock:
            await self._ensure_up(jitter)
            generation = self._generation
            previous, mine = self._read_turn, asyncio.get_running_loop().create_future()
            self._read_turn = mine
            try:
                await self._conn.send_packed_command(payload, check_health=False)
            except BaseException as exc:
                mine.set_result(None)
                lost = await self._lose(generation, exc)
                if isinstance(exc, _BROKEN):
                    raise lost from exc
                raise
        return generation, previous, mine

    async def _read(self, count: int) -> list[Any]:
        raw: list[Any] = []
        for _ in range(count):
            try:
                raw.append(await self._conn.read_response())
            except ResponseError as exc:
                raw.append(exc)
        return raw

    async def _lose(self, generation: int, exc: BaseException) -> _Lost:
        """After an error on the connection of `generation`: drop it, once (replies may
        be pending on it); later batches written to it see a new generation."""
        if generation == self._generation and not isinstance(exc, _Lost):
            self._generation += 1
            self._mark_down(exc)
            await self._conn.disconnect(nowait=True)
        return _Lost(str(exc))

    def _settle(self, todo: list[int], raw: list[Any], plans: dict[int, Plan],
                cmds: list[Any], results: list[Any], resent: bool) -> list[int]:
        """Decode the answers; return the commands to send again (script not loaded)."""
        missing: list[int] = []
        for i, answer in zip(todo, raw, strict=True):
            if isinstance(answer, NoScriptError):
                missing.append(i)
            elif isinstance(answer, ResponseError):
                results[i] = _storage_error(cmds[i], answer)
            else:
                results[i] = decode(cmds[i], plans[i], answer, resent)
        return missing

    def _after_loss(self, exc: _Lost, todo: list[int], plans: dict[int, Plan],
                    cmds: list[Any], results: list[Any]) -> list[int]:
        """The connection broke mid-batch: fail what may not be resent, keep the rest."""
        for i in todo:
            if not plans[i].resend:
                results[i] = StorageUnavailable(
                    f"connection to Redis at {self.settings.display} broke during "
                    f"{type(cmds[i]).__name__} ({exc}); its leases, if any, expire")
        return [i for i in todo if plans[i].resend]

    def _mark_down(self, exc: BaseException) -> None:
        if self._up and not isinstance(exc, asyncio.CancelledError):
            log.warning("lost Redis at %s: %s; reconnecting", self.settings.display, exc)
        self._up = False
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()

    async def _ensure_up(self, jitter: float) -> None:
        """Reconnect with backoff, within `retry_s` of the first failure.

        Raises:
            StorageUnavailable: Redis stayed unreachable.
        """
        delay = BACKOFF_MIN_S
        while not self._up:
            error = await self._connect_once()
            if error is None:
                return
            assert self._down_since is not None
            waited = asyncio.get_running_loop().time() - self._down_since
            if waited >= self.retry_s:
                raise StorageUnavailable(
                    f"Redis at {self.settings.display} unreachable for {waited:.1f}s: "
                    f"{error}") from None
            await asyncio.sleep(min(delay * jitter, self.retry_s - waited))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _connect_once(self) -> BaseException | None:
        """Open the connection and ping; returns the error, None when it is up."""
        try:
            await self._conn.connect()  # type: ignore[no-untyped-call]
            await self._command("PING")
        except _BROKEN as exc:
            self._mark_down(exc)
            await self._conn.disconnect(nowait=True)
            return exc
        if self._down_since is not None:
            log.warning("reconnected to Redis at %s", self.settings.display)
        self._up, self._down_since = True, None
        return None

    # -- events ---------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        client = Redis(connection_pool=ConnectionPool.from_url(self.settings.url, **{
            **_OPTIONS, "socket_timeout": None}))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(f"{self.settings.prefix}:events")
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub

    async def next_events(self, jitter: float = 1.0) -> Events:
        """Wait for events; return every event that arrived (merged).

        A lost subscription is made again with backoff; the `Events` returned then has
        `resubscribed=True`.
        """
        while True:
            if self._pubsub is None:
                await self._resubscribe(jitter)
                return Events(resubscribed=True)
            try:
                payloads = await self._receive(self._pubsub)
            except _BROKEN as exc:
                log.warning("lost the events subscription to Redis: %s", exc)
                pubsub, self._pubsub = self._pubsub, None
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                continue
            if payloads:
                return parse_events(payloads)

    async def _resubscribe(self, jitter: float) -> None:
        delay = BACKOFF_MIN_S
        while True:
            try:
                await self._subscribe()
                return
            except _BROKEN:
                await asyncio.sleep(delay * jitter)
                delay = min(delay * 2, BACKOFF_MAX_S)

    async def _receive(self, pubsub: PubSub) -> list[bytes]:
        try:
            message = await pubsub.get_message(timeout=PUBSUB_IDLE_S)
        except asyncio.CancelledError:
            # Interrupted mid-read: the next look subscribes afresh.
            self._pubsub = None
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        if message is None:
            await pubsub.ping()
            return []
        payloads: list[bytes] = []
        while message is not None and len(payloads) < EVENTS_MAX:
            if message.get("type") == "message":
                payloads.append(message["data"])
            message = await pubsub.get_message(timeout=0.0)
        return payloads


_Turn = asyncio.Future[None]


class _Lost(Exception):
    """The connection a batch was written to broke: its outcome is unknown."""


def _warn_persistence(where: str, config: dict[str, str]) -> None:
    if not config:
        log.warning("cannot read the configuration of Redis at %s (CONFIG is disabled): "
                    "check that maxmemory-policy is noeviction (docs/redis.md)", where)
    elif config.get("appendonly") != "yes" and not config.get("save"):
        log.warning("Redis at %s persists nothing (no AOF, no RDB): a Redis restart "
                    "loses every job (docs/redis.md)", where)
    elif config.get("appendonly") != "yes":
        log.warning("Redis at %s keeps RDB snapshots only: a Redis crash loses the jobs "
                    "written since the last snapshot (docs/redis.md)", where)


def _fail(results: list[Any], todo: list[int], exc: Exception) -> None:
    for i in todo:
        results[i] = exc


def _encode_all(cmds: list[Any], results: list[Any]) -> dict[int, Plan]:
    """The script call of each command; a non-command gets its TypeError in `results`."""
    plans: dict[int, Plan] = {}
    for i, cmd in enumerate(cmds):
        try:
            plans[i] = encode(cmd, NODES_MAX)
        except TypeError as exc:
            results[i] = exc
    return plans


def _storage_error(cmd: Any, exc: ResponseError) -> StorageError:
    text = str(exc)
    if text.startswith("GOTASK-FULL "):
        return StorageFull(text.removeprefix("GOTASK-FULL "))
    if text.startswith("OOM"):
        return StorageFull(f"Redis is out of memory (maxmemory) during "
                           f"{type(cmd).__name__}: {text}")
    return StorageError(f"Redis refused {type(cmd).__name__}: {text}")
