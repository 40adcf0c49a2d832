"""The PostgreSQL storage actor: the storage contract on a PostgreSQL shared by every node.

Rules of this module:
- `open_postgres_storage(url)` connects in its own asyncio thread (`_aiothread`),
  applies missing migrations under an advisory lock and LISTENs for events; the node
  keeps the returned `PostgresStorage` across restarts of the actor.
- The actor is the one storage shell over this backend through the asyncio thread
  bridge (`_aiostore`), as for Redis: batches cross into the asyncio thread once each
  way, parked leases wait for notifications (LISTEN/NOTIFY, see `_postgres_backend`),
  watchers get `JobChanged` pushes, cancellations reach the node running the job.
- `enqueue_statement` gives the SQL and parameters that enqueue one job on the caller's
  own connection, inside the caller's transaction: the job exists if and only if that
  transaction commits, and the nodes pick it up through the same notification.
- `migrate(url)` applies the migrations (`gotask migrate`); `migration_script` prints them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

from gotask._app import App, unpack_args
from gotask._job import NewJob
from gotask._protocol import JobSpec, check_spec
from gotask.runtime import ActorContext
from gotask.runtime._aiothread import AioThread
from gotask.runtime.world import World, real_world

from ._aiostore import AioStorage, run_aio_storage
from ._postgres_backend import PostgresBackend
from ._postgres_schema import check_schema, migration_script
from ._postgres_settings import PostgresSettings, apply_migrations

__all__ = [
    "PostgresSettings",
    "PostgresStorage",
    "drop_schema",
    "enqueue_statement",
    "migrate",
    "migration_script",
    "open_postgres_storage",
    "run_postgres_storage",
    "server_cpu_s",
    "with_schema",
]


class PostgresStorage(AioStorage[PostgresSettings, PostgresBackend]):
    """A connected PostgreSQL backend and the asyncio thread it lives in."""


async def open_postgres_storage(url: str, *, migrate: bool = True) -> PostgresStorage:
    """Connect to the PostgreSQL at `url` (`postgresql://user@host:port/db?schema=S`).

    Raises:
        ConfigError: a malformed URL or option.
        StorageUnavailable: the database cannot be reached.
    """
    settings = PostgresSettings.from_url(url)
    aio = AioThread("gotask-postgres")
    backend = PostgresBackend(settings)
    try:
        await aio.call(_open, backend, migrate)
    except BaseException:
        await aio.aclose()
        raise
    return PostgresStorage(settings, aio, backend)


async def _open(backend: PostgresBackend, migrate: bool) -> None:
    await backend.open(migrate=migrate)


async def run_postgres_storage(
    ctx: ActorContext,
    *,
    storage: PostgresStorage,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with the PostgreSQL backend of `storage`."""
    await run_aio_storage(ctx, storage=storage, task_status=task_status)


async def migrate(url: str) -> list[int]:
    """Apply the migrations the schema of `url` lacks; returns the versions applied.

    Raises:
        ConfigError: a malformed URL.
        OSError, asyncpg.PostgresError: the database cannot be reached or refused.
    """
    import asyncpg  # type: ignore[import-untyped]

    settings = PostgresSettings.from_url(url)
    conn = await asyncpg.connect(**settings.connect_kwargs(), timeout=5.0)
    try:
        return await apply_migrations(conn, settings.schema)
    finally:
        await conn.close()


# -- transactional enqueue --------------------------------------------------------------

def enqueue_statement(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    schema: str = "gotask",
    paramstyle: str = "numeric",
    app: App | None = None,
    world: World | None = None,
    **options: Any,
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters that enqueue one job on the caller's own connection.

    Run them inside your transaction: the job commits or rolls back with your data.
    The arguments are encoded as the client encodes them (msgpack `[args, kwargs]`).

    Args:
        task: the registered task name.
        schema: GoTask's schema in that database.
        paramstyle: "numeric" ($1, asyncpg) or "format" (%s: psycopg, Django,
            SQLAlchemy's `exec_driver_sql`).
        app: when given, the task's own defaults (queue, priority, attempts, timeout,
            result TTL) apply as they do through the Broker, and the arguments are
            checked against its signature.
        world: where the job id comes from (default: the real clock and randomness).
        options: queue, priority, delay_s, max_attempts, timeout_s, result_ttl_s,
            idempotency_key, as `Client.enqueue` takes them.

    Returns:
        `(sql, params)`; the statement returns one row `(job_id, created)`.

    Raises:
        InvalidArguments, TypeError, ValueError: as `Client.enqueue` would.
    """
    spec = check_spec(task, args, kwargs, options)
    job = _new_job(spec, app, (world or real_world()).new_id())
    params = (job.id, job.task, job.queue, job.args, job.priority,
              float(job.delay_s), job.max_attempts, job.timeout_s, float(job.result_ttl_s),
              job.idempotency_key)
    if paramstyle not in ("numeric", "format"):
        raise ValueError(f"paramstyle must be 'numeric' or 'format', got {paramstyle!r}")
    marks = [f"${i}" if paramstyle == "numeric" else "%s" for i in range(1, 11)]
    casts = ("text", "text", "text", "bytea", "integer", "double precision", "integer",
             "double precision", "double precision", "text")
    arrays = ", ".join(f"ARRAY[{m}::{c}]" for m, c in zip(marks, casts, strict=True))
    sql = (f'SELECT job_id, created FROM "{check_schema(schema)}".enqueue({arrays}, NULL)')
    return sql, params


def _new_job(spec: JobSpec, app: App | None, job_id: str) -> NewJob:
    """The stored job, built as the Broker builds it (its defaults when `app` is None:
    queue "default", 3 attempts, no timeout, results kept a day)."""
    if app is None:
        return NewJob(
            id=job_id, task=spec.task, queue=spec.queue or "default", args=spec.args,
            priority=spec.priority or 0, delay_s=spec.delay_s,
            max_attempts=spec.max_attempts or 3, timeout_s=spec.timeout_s,
            result_ttl_s=86_400.0 if spec.result_ttl_s is None else spec.result_ttl_s,
            idempotency_key=spec.idempotency_key)
    task = app.get(spec.task)
    task.bind_check(*unpack_args(spec.args))
    return NewJob(
        id=job_id, task=task.name, queue=spec.queue or task.queue, args=spec.args,
        priority=task.priority if spec.priority is None else spec.priority,
        delay_s=spec.delay_s, max_attempts=spec.max_attempts or task.max_attempts,
        timeout_s=task.timeout_s if spec.timeout_s is None else spec.timeout_s,
        result_ttl_s=task.result_ttl_s if spec.result_ttl_s is None else spec.result_ttl_s,
        idempotency_key=spec.idempotency_key)


# -- tests and benchmarks ----------------------------------------------------------------


def with_schema(url: str, schema: str) -> str:
    """`url` with its schema replaced by `schema`."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


def drop_schema(url: str) -> None:
    """Drop the URL's schema and everything in it (tests, benchmarks). Synchronous."""
    settings = PostgresSettings.from_url(url)
    asyncio.run(_sql(settings, f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE'))


def server_cpu_s(url: str) -> float:
    """CPU seconds used so far by the server's background processes and GoTask's
    connections, read from /proc (0 when the server is on another machine).
    Approximate: connections that ended no longer count."""
    settings = PostgresSettings.from_url(url)
    pids = asyncio.run(_sql(settings, (
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity "
        "WHERE backend_type <> 'client backend' OR application_name = 'gotask'")))
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _sql(settings: PostgresSettings, sql: str) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(**settings.connect_kwargs(), timeout=5.0)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
