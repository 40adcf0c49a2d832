"""The asyncio side of the PostgreSQL backend: the pool, batches, migrations, events.

Rules of this module:
- Everything here runs inside the storage actor's asyncio thread (or a test's own
  loop): a `PostgresBackend` is created, used and closed in one event loop. Its surface
  is the Redis backend's: `open`, `execute(cmds, now, jitter)`, `next_events`, `close`.
- A batch is one transaction on one pooled connection: each command one SQL call (see
  `_postgres_codec`; adjacent enqueues, and adjacent acks, are merged into one), then
  one COMMIT, so one WAL flush per batch. Batches may run at once on several
  connections; the functions are fenced and lock rows, so they may.
- A command the database refuses (an error raised by its statement) is answered with
  that error; the rest of its batch runs again in a new transaction. A deadlock or
  serialization failure runs the batch again (at most `SENDS_MAX` times). Nothing is
  dropped silently.
- A broken connection before COMMIT: the transaction did not happen, the batch runs
  again (at most `SENDS_MAX` times). Broken during COMMIT, the outcome is unknown:
  leases fail with `StorageUnavailable` (their jobs expire and are requeued), the rest
  are sent again. Connections are retried with capped exponential backoff for up to
  `retry_s` seconds, then every batch fails at once with `StorageUnavailable` until a
  connection succeeds.
- The clock: `now=None` lets every statement read the database clock; tests pin it.
- Events: a separate connection LISTENs on the schema's channel; notifications are
  merged into the shell's `StorageEvents`. A wait of `SAFETY_POLL_S` without any
  checks the listener (a query) and answers `StorageEvents(resubscribed=True)`, so parked
  leases look again: a slow safety poll. A lost listener is reconnected with backoff
  and counted (`listener_reconnects`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gotask._errors import StorageError, StorageFull, StorageUnavailable

from ._backend import StorageEvents
from ._postgres_codec import Plan, encode, enqueue_resent, merge, split
from ._postgres_schema import channel
from ._postgres_settings import PostgresSettings, apply_migrations
from .base import EnqueueJobs, EnqueueReply

__all__ = ["PostgresBackend"]

log = logging.getLogger("gotask.storage.postgres")

CONNECT_TIMEOUT_S = 5.0
RETRY_S = 10.0
SENDS_MAX = 5
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 1.0
#: Longest wait for events before the listener is checked and parked leases look again.
SAFETY_POLL_S = 10.0
EVENTS_MAX = 1000
NODES_MAX = 10_000
_BROKEN: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
_AGAIN = ("40001", "40P01")  # serialization failure, deadlock: run the batch again


class _Lost(Exception):
    """A connection broke during a batch; `committing` if it was sending COMMIT."""

    def __init__(self, exc: BaseException, committing: bool) -> None:
        super().__init__(str(exc))
        self.committing = committing


class _Refused(Exception):
    """Command `index` of the batch failed; the transaction was rolled back."""

    def __init__(self, index: int, exc: asyncpg.PostgresError) -> None:
        super().__init__(str(exc))
        self.index, self.exc = index, exc


class PostgresBackend:
    """The storage contract over one PostgreSQL schema, for one asyncio loop.

    Args:
        settings: where the database is, the schema and the pool's options.
        retry_s: how long a batch retries an unreachable database (seconds).
    """

    def __init__(self, settings: PostgresSettings, retry_s: float = RETRY_S) -> None:
        self.settings = settings
        self.retry_s = retry_s
        self.schema = f'"{settings.schema}"'
        self.listener_reconnects = 0
        self._pool: asyncpg.Pool | None = None
        self._down_since: float | None = None
        self._listener: asyncpg.Connection | None = None
        self._payloads: list[str] = []
        self._arrived = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self, *, subscribe: bool = True, migrate: bool = True) -> None:
        """Connect, apply missing migrations, warn when autovacuum is off, LISTEN for
        events.

        Raises:
            StorageUnavailable: the database cannot be reached.
        """
        try:
            if migrate:
                conn = await self._connect()
                try:
                    await apply_migrations(conn, self.settings.schema)
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                min_size=1, max_size=self.settings.pool_size, **self.settings.connect_kwargs(),
                timeout=CONNECT_TIMEOUT_S, reset=_reset)
            await self._check_server()
            if subscribe:
                await self._listen()
        except _BROKEN as exc:
            await self.close()
            raise StorageUnavailable(
                f"cannot reach PostgreSQL at {self.settings.display}: {exc}") from None

    async def _check_server(self) -> None:
        assert self._pool is not None
        if await self._pool.fetchval("SHOW autovacuum") != "on":
            log.warning("PostgreSQL at %s runs with autovacuum off: the jobs table and its "
                        "indexes grow with every job until VACUUM runs (docs/postgres.md)",
                        self.settings.display)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.settings.connect_kwargs(),
                                     timeout=CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        """Close the pool and the listener."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)
            except _BROKEN:
                pool.terminate()

    # -- commands -------------------------------------------------------------------------

    async def execute(self, cmds: list[Any], now: float | None = None,
                      jitter: float = 1.0) -> list[Any]:
        """Run a batch of storage commands in one transaction; return each one's reply
        or exception (see the module rules)."""
        groups = merge(cmds)
        merged = [cmd for _, cmd in groups]
        replies = await self._execute(merged, now, jitter)
        results: list[Any] = [None] * len(cmds)
        for (indexes, _), reply in zip(groups, replies, strict=True):
            for i, part in zip(indexes, split([cmds[i] for i in indexes], reply), strict=True):
                results[i] = part
        return results

    async def _execute(self, cmds: list[Any], now: float | None, jitter: float) -> list[Any]:
        results: list[Any] = [None] * len(cmds)
        plans: dict[int, Plan] = {}
        for i, cmd in enumerate(cmds):
            try:
                plans[i] = encode(cmd, self.schema, now, NODES_MAX)
            except TypeError as exc:
                results[i] = exc
        todo, resent, sends = sorted(plans), False, 0
        while todo:
            try:
                rows = await self._transaction([plans[i] for i in todo], jitter)
            except StorageUnavailable as exc:
                return _fail(results, todo, exc)
            except _Refused as exc:
                results[todo[exc.index]] = _storage_error(cmds[todo[exc.index]], exc.exc)
                del todo[exc.index]
                continue
            except _Lost as exc:
                sends += 1
                if sends >= SENDS_MAX:
                    return _fail(results, todo, StorageUnavailable(
                        f"PostgreSQL at {self.settings.display} did not run the commands in "
                        f"{SENDS_MAX} attempts (connection lost each time): {exc}"))
                if exc.committing:
                    todo = self._after_loss(exc, todo, plans, cmds, results)
                    resent = True
                continue
            for i, raw in zip(todo, rows, strict=True):
                results[i] = _decode(cmds[i], plans[i], raw, resent)
            return results
        return results

    async def _transaction(self, plans: list[Plan], jitter: float) -> list[Any]:
        """Run `plans` in one transaction; returns their rows.

        Raises:
            StorageUnavailable: no connection within `retry_s`.
            _Refused: a statement failed (rolled back).
            _Lost: the connection broke.
        """
        for again in range(SENDS_MAX):
            conn = await self._acquire(jitter)
            try:
                return await self._run(conn, plans)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in _AGAIN or again == SENDS_MAX - 1:
                    raise _Refused(0, exc) if len(plans) == 1 else _Lost(exc, False) from exc
            finally:
                await self._release(conn)
        raise AssertionError("unreachable")

    async def _run(self, conn: asyncpg.Connection, plans: list[Plan]) -> list[Any]:
        if len(plans) == 1:  # one statement is a transaction of its own: 1 round trip, not 3
            return await self._run_one(conn, plans[0])
        committing = False
        try:
            await conn.execute("BEGIN")
            rows = []
            for index, plan in enumerate(plans):
                try:
                    rows.append(await conn.fetch(plan.sql, *plan.args))
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, _BROKEN) or exc.sqlstate in _AGAIN:
                        raise
                    await conn.execute("ROLLBACK")
                    raise _Refused(index, exc) from exc
            committing = True
            await conn.execute("COMMIT")
            return rows
        except _BROKEN as exc:
            self._mark_down(exc)
            raise _Lost(exc, committing) from exc
        except asyncpg.PostgresError:
            if not conn.is_closed():
                await conn.execute("ROLLBACK")
            raise

    async def _run_one(self, conn: asyncpg.Connection, plan: Plan) -> list[Any]:
        try:
            rows: list[Any] = await conn.fetch(plan.sql, *plan.args)
        except _BROKEN as exc:
            self._mark_down(exc)
            raise _Lost(exc, True) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in _AGAIN:
                raise
            raise _Refused(0, exc) from exc
        return [rows]

    async def _acquire(self, jitter: float) -> asyncpg.Connection:
        """A pooled connection, retrying with backoff within `retry_s` of the first failure.

        Raises:
            StorageUnavailable: the database stayed unreachable.
        """
        delay = BACKOFF_MIN_S
        while True:
            if self._pool is None:
                raise StorageUnavailable(f"PostgreSQL at {self.settings.display} is closed")
            try:
                conn: asyncpg.Connection = await self._pool.acquire(timeout=CONNECT_TIMEOUT_S)
            except _BROKEN as exc:
                error: BaseException = exc
                self._mark_down(exc)
            else:
                if self._down_since is not None:
                    log.warning("reconnected to PostgreSQL at %s", self.settings.display)
                    self._down_since = None
                return conn
            waited = asyncio.get_running_loop().time() - (self._down_since or 0.0)
            if waited >= self.retry_s:
                raise StorageUnavailable(
                    f"PostgreSQL at {self.settings.display} unreachable for {waited:.1f}s: "
                    f"{error}") from None
            await asyncio.sleep(min(delay * jitter, self.retry_s - waited))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _release(self, conn: asyncpg.Connection) -> None:
        if self._pool is None:
            conn.terminate()
            return
        try:
            await self._pool.release(conn)
        except _BROKEN:
            conn.terminate()

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("lost PostgreSQL at %s: %s; reconnecting",
                            self.settings.display, exc)
            self._down_since = asyncio.get_running_loop().time()

    def _after_loss(self, exc: _Lost, todo: list[int], plans: dict[int, Plan],
                    cmds: list[Any], results: list[Any]) -> list[int]:
        """The connection broke during COMMIT: fail what may not be resent."""
        for i in todo:
            if not plans[i].resend:
                results[i] = StorageUnavailable(
                    f"connection to PostgreSQL at {self.settings.display} broke while "
                    f"committing {type(cmds[i]).__name__} ({exc}); its leases, if any, expire")
        return [i for i in todo if plans[i].resend]

    # -- events ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            await conn.add_listener(channel(self.settings.schema), self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _conn: self._arrived.set())
        self._listener = conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if len(self._payloads) < 100 * EVENTS_MAX:
            self._payloads.append(payload)
        self._arrived.set()

    async def next_events(self, jitter: float = 1.0) -> StorageEvents:
        """Wait for events; return every event that arrived (merged).

        After `SAFETY_POLL_S` without any, or when the listener was lost (then remade
        with backoff and counted), answers `StorageEvents(resubscribed=True)`.
        """
        while True:
            if self._listener is None or self._listener.is_closed():
                await self._relisten(jitter)
                return StorageEvents(resubscribed=True)
            try:
                await asyncio.wait_for(self._arrived.wait(), SAFETY_POLL_S)
            except TimeoutError:
                if await self._listener_alive():
                    return StorageEvents(resubscribed=True)
                continue
            self._arrived.clear()
            payloads, self._payloads = self._payloads, []
            if payloads:
                return parse_events(payloads)

    async def _listener_alive(self) -> bool:
        assert self._listener is not None
        try:
            await asyncio.wait_for(self._listener.fetchval("SELECT 1"), CONNECT_TIMEOUT_S)
        except _BROKEN:
            self._listener.terminate()
            return False
        return True

    async def _relisten(self, jitter: float) -> None:
        if self._listener is not None:
            log.warning("lost the events listener of PostgreSQL at %s; listening again",
                        self.settings.display)
            self._listener.terminate()
            self._listener = None
        delay = BACKOFF_MIN_S
        while True:
            try:
                await self._listen()
            except _BROKEN:
                await asyncio.sleep(delay * jitter)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.listener_reconnects += 1
            self._arrived.clear()
            return


def parse_events(payloads: list[str]) -> StorageEvents:
    """Merge notifications (JSON arrays, see `_postgres_functions`) into one `StorageEvents`.

    `now` is left None: a notification is sent at commit, after the time it could
    carry, so every ready queue counts for parked leases.
    """
    ids: set[str] = set()
    ready: set[str] = set()
    due: list[tuple[str, float]] = []
    cancels: list[tuple[str, str, int]] = []
    for payload in payloads:
        event = json.loads(payload)
        kind = event[0]
        if kind == "r":
            ready.add(event[1])
        elif kind == "d":
            due.append((event[1], float(event[2])))
        elif kind == "c":
            cancels.append((event[1], event[2], int(event[3])))
        elif kind == "i":
            ids.add(event[1])
    return StorageEvents(None, frozenset(ids), frozenset(ready), tuple(due), tuple(cancels))


async def _reset(conn: asyncpg.Connection) -> None:
    """Make a connection given back to the pool clean. Batches leave no session state
    (no LISTEN, no settings, no cursors), so asyncpg's default reset, a round trip per
    batch, is only needed after a cancelled batch: roll its transaction back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _fail(results: list[Any], todo: list[int], exc: Exception) -> list[Any]:
    for i in todo:
        results[i] = exc
    return results


def _decode(cmd: Any, plan: Plan, rows: Any, resent: bool) -> Any:
    reply = plan.decode(rows)
    if resent and isinstance(cmd, EnqueueJobs):
        assert isinstance(reply, EnqueueReply)
        return enqueue_resent(cmd, reply)
    return reply


def _storage_error(cmd: Any, exc: asyncpg.PostgresError) -> StorageError:
    if exc.sqlstate == "GT001":
        return StorageFull(str(exc))
    if exc.sqlstate in ("53100", "53200", "54000"):  # disk full, out of memory, too big
        return StorageFull(f"PostgreSQL is full during {type(cmd).__name__}: {exc}")
    return StorageError(f"PostgreSQL refused {type(cmd).__name__}: {exc}")
