"""Helpers shared by the PostgreSQL tests: the test database and a pinned-clock harness.

The tests run against `GOTASK_TEST_POSTGRES_DSN` (default
postgresql://postgres@127.0.0.1:5432/gotask_test), created when missing. Every harness
uses a schema of its own (pid and a counter in its name), so parallel runs do not
collide; a closed harness empties its schema for the next harness of the same process
(creating one per Hypothesis example would take most of the test's time), and the
process drops its schemas when it exits.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from gotask.actors.storage._postgres_backend import PostgresBackend
from gotask.actors.storage._postgres_settings import PostgresSettings
from gotask.actors.storage._redis_codec import Leased
from gotask.actors.storage.base import Command

R = TypeVar("R")
START_S = 1_700_000_000.0
DSN = os.environ.get("GOTASK_TEST_POSTGRES_DSN",
                     "postgresql://postgres@127.0.0.1:5432/gotask_test")
_schemas = itertools.count(1)
_TABLES = ("jobs", "counts", "count_deltas", "fair", "nodes", "cron_entries", "paused_queues")


async def _ensure_database() -> None:
    parts = urlsplit(DSN)
    name = parts.path.lstrip("/")
    try:
        conn = await asyncpg.connect(DSN, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=3)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
        return
    await conn.close()


def unreachable() -> str | None:
    """Why the test database cannot be used, or None."""
    try:
        asyncio.run(_ensure_database())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL at {DSN} ({exc}); set GOTASK_TEST_POSTGRES_DSN"
    return None


def unique_schema(name: str = "t") -> str:
    """A schema name no other test (or process) uses."""
    return f"gt_{name}_{os.getpid()}_{next(_schemas)}"


def url_for(schema: str, **options: str) -> str:
    """The test database's URL with `schema` and other GoTask options."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())
    return f"{DSN}{'&' if '?' in DSN else '?'}{query}"


def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    async def drop() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    asyncio.run(drop())


_LOOP = asyncio.new_event_loop()
_free: list[tuple[str, PostgresBackend]] = []
_made: list[str] = []
_admin: list[asyncpg.Connection] = []


def _drop_all() -> None:
    for _, backend in _free:
        _LOOP.run_until_complete(backend.close())
    for schema in _made:
        drop_schema(schema)


atexit.register(_drop_all)


class PostgresHarness:
    """The PostgreSQL backend in a loop of its own, with a pinned storage clock.

    Harnesses of one process share one asyncio loop and reuse the schemas (and open
    backends) of closed ones, emptied.
    """

    def __init__(self) -> None:
        self.clock = START_S
        if _free:
            self.schema, self.backend = _free.pop()
            return
        self.schema = unique_schema()
        _made.append(self.schema)
        url = url_for(self.schema, pool_size="1", synchronous_commit="off")
        self.backend = PostgresBackend(PostgresSettings.from_url(url))
        _LOOP.run_until_complete(self.backend.open(subscribe=False))

    def execute(self, cmd: Command[R]) -> R:
        (reply,) = _LOOP.run_until_complete(self.backend.execute([cmd], self.clock))
        if isinstance(reply, Exception):
            raise reply
        return reply.reply if isinstance(reply, Leased) else reply  # type: ignore[no-any-return]

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock

    def close(self) -> None:
        _LOOP.run_until_complete(self._empty())
        _free.append((self.schema, self.backend))

    async def _empty(self) -> None:
        if not _admin:
            _admin.append(await asyncpg.connect(DSN))
        await _admin[0].execute(
            "; ".join(f'DELETE FROM "{self.schema}".{t}' for t in _TABLES))
