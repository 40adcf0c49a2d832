"""Where the PostgreSQL backend lives, and how its schema is brought up to date.

Rules of this module:
- `PostgresSettings.from_url` parses `postgresql://user:password@host:port/db?options`
  (or `postgres://`). GoTask's own options are taken out of the URL: `schema` (default
  `gotask`), `pool_size` (1-100, default 4), `statement_timeout` (PostgreSQL syntax:
  `30s`, `500ms`, `0` = none; default `30s`) and `synchronous_commit` (`on`, the
  default, or `off`/`local`/`remote_write`/`remote_apply`); the rest of the URL goes to
  asyncpg as is (sslmode, ...).
- `apply_migrations` runs in one transaction under an advisory lock keyed by the
  schema, so nodes starting together apply each migration once; applied versions are
  rows of `<schema>.migrations`.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import attrs

from gotask._errors import ConfigError

from ._postgres_schema import SCHEMA_VERSION, check_schema, migrations
from ._redis_backend import redact

__all__ = ["PostgresSettings", "applied_versions", "apply_migrations"]

log = logging.getLogger("gotask.storage.postgres")

SCHEMES = ("postgresql", "postgres")
POOL_MAX = 100
_TIMEOUT = re.compile(r"\d{1,9}(ms|s|min)?")
_SYNC = ("on", "off", "local", "remote_write", "remote_apply")
_OWN = ("schema", "pool_size", "statement_timeout", "synchronous_commit")


@attrs.frozen
class PostgresSettings:
    """A parsed storage URL: `dsn` for asyncpg, `display` safe to log (no password)."""

    dsn: str
    display: str
    schema: str = "gotask"
    pool_size: int = 4
    statement_timeout: str = "30s"
    synchronous_commit: str = "on"

    @classmethod
    def from_url(cls, url: str) -> PostgresSettings:
        """Parse a storage URL.

        Raises:
            ConfigError: not postgresql:// or postgres://, or a bad option.
        """
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ConfigError(
                f"not a PostgreSQL URL (postgresql://user@host:port/db): {redact(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = dict(q for q in query if q[0] in _OWN)
        rest = urlencode([q for q in query if q[0] not in _OWN])
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=rest))
        return cls(dsn, redact(url), check_schema(own.get("schema", "gotask")),
                   _pool_size(own.get("pool_size", "4")),
                   _timeout(own.get("statement_timeout", "30s")),
                   _sync(own.get("synchronous_commit", "on")))

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.connect` and `asyncpg.create_pool`."""
        return {"dsn": self.dsn, "server_settings": {
            "application_name": "gotask", "statement_timeout": self.statement_timeout,
            "synchronous_commit": self.synchronous_commit}}


def _pool_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= POOL_MAX:
        raise ConfigError(f"pool_size must be 1-{POOL_MAX}, got {text!r}")
    return int(text)


def _timeout(text: str) -> str:
    if not _TIMEOUT.fullmatch(text):
        raise ConfigError(f"statement_timeout must be like 30s, 500ms or 0, got {text!r}")
    return text


def _sync(text: str) -> str:
    if text not in _SYNC:
        raise ConfigError(f"synchronous_commit must be one of {', '.join(_SYNC)}, got {text!r}")
    return text


async def applied_versions(conn: asyncpg.Connection, schema: str) -> set[int]:
    """The migration versions applied to `schema` (empty when it has none)."""
    exists = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".migrations')
    if exists is None:
        return set()
    return {r[0] for r in await conn.fetch(f'SELECT version FROM "{schema}".migrations')}


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Apply the migrations `schema` lacks, once, under an advisory lock; returns them."""
    quoted = f'"{check_schema(schema)}"'
    if max(await applied_versions(conn, schema), default=0) >= SCHEMA_VERSION:
        return []
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                           f"gotask-migrate:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.migrations "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = await applied_versions(conn, schema)
        for version, sql in migrations(schema):
            if version not in done:
                await conn.execute(sql)
                await conn.execute(f"INSERT INTO {quoted}.migrations (version) VALUES ($1)",
                                   version)
                applied.append(version)
    if applied:
        log.info("applied migrations %s to schema %s", applied, schema)
    return applied
