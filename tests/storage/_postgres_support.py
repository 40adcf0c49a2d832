"""Helpers shared by the PostgreSQL tests: the test database and a pinned-clock harness.

The tests run against `GOTASK_TEST_POSTGRES_DSN` (default
postgresql://postgres@127.0.0.1:5432/gotask_test), created when missing. Every harness
uses a schema of its own (pid and a counter in its name) and drops it when closed, so
parallel runs do not collide.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gotask.actors.storage._postgres_backend import PostgresBackend
from gotask.actors.storage._postgres_settings import PostgresSettings
from gotask.actors.storage._redis_codec import Leased
from gotask.actors.storage.base import Command

R = TypeVar("R")
START_S = 1_700_000_000.0
DSN = os.environ.get("GOTASK_TEST_POSTGRES_DSN",
                     "postgresql://postgres@127.0.0.1:5432/gotask_test")
_schemas = itertools.count(1)


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
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
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


class PostgresHarness:
    """The PostgreSQL backend in a loop of its own, with a pinned storage clock."""

    def __init__(self) -> None:
        self.schema = unique_schema()
        self.url = url_for(self.schema, pool_size="1")
        self.clock = START_S
        self.loop = asyncio.new_event_loop()
        self.backend = PostgresBackend(PostgresSettings.from_url(self.url))
        self.loop.run_until_complete(self.backend.open(subscribe=False))

    def execute(self, cmd: Command[R]) -> R:
        (reply,) = self.loop.run_until_complete(self.backend.execute([cmd], self.clock))
        if isinstance(reply, Exception):
            raise reply
        return reply.reply if isinstance(reply, Leased) else reply  # type: ignore[no-any-return]

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()
        drop_schema(self.schema)
