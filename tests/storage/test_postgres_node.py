"""The PostgreSQL storage actor and nodes on PostgreSQL: wake-ups, watchers, cancellation,
a cluster of two nodes, transactional enqueue, migrations and the backend's own rules.

Every test uses a schema of its own on `GOTASK_TEST_POSTGRES_DSN` and drops it after.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgpack
import pytest
import trio

from gotask._app import App, pack_args
from gotask._errors import ConfigError, StorageFull, StorageUnavailable
from gotask._job import LeaseToken
from gotask._messages import (
    BROKER,
    STORAGE,
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    WatchJobs,
)
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import Server, open_server
from gotask.actors.storage._postgres_backend import PostgresBackend, parse_events
from gotask.actors.storage._postgres_schema import SCHEMA_VERSION
from gotask.actors.storage._postgres_settings import PostgresSettings, applied_versions
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    CancelJobs,
    CountJobs,
    EnqueueJobs,
    GetJobs,
    LeaseJobs,
    QueueCount,
    QueueWeight,
    RegisterNode,
)
from gotask.actors.storage.postgres import (
    enqueue_statement,
    migrate,
    open_postgres_storage,
    run_postgres_storage,
)
from gotask.config import NodeConfig
from gotask.runtime import Address, open_node

from ._cluster_pause import pause_holds_on_both_nodes
from ._postgres_support import DSN, drop_schema, unique_schema, unreachable, url_for
from .contract import new_job
from .shell_contract import Actor, StorageShellContract

if (_reason := unreachable()) is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture
def schema() -> Iterator[str]:
    name = unique_schema("n")
    yield name
    drop_schema(name)


def _partial(storage: Any) -> Any:
    return functools.partial(run_postgres_storage, storage=storage)


# -- settings and migrations -------------------------------------------------------------------


def test_settings_take_gotask_options_out_of_the_url() -> None:
    s = PostgresSettings.from_url(
        "postgres://u:secret@db:5433/app?schema=jobs&pool_size=8&statement_timeout=5s"
        "&synchronous_commit=off&sslmode=disable")
    assert (s.schema, s.pool_size, s.statement_timeout, s.synchronous_commit) == (
        "jobs", 8, "5s", "off")
    assert s.dsn == "postgresql://u:secret@db:5433/app?sslmode=disable"
    assert "secret" not in s.display
    assert PostgresSettings.from_url("postgresql://h/db").schema == "gotask"
    for bad in ("postgresql://h/db?schema=Bad-Name", "postgresql://h/db?pool_size=0",
                "postgresql://h/db?statement_timeout=soon", "mysql://h/db",
                "postgresql://h/db?synchronous_commit=maybe"):
        with pytest.raises(ConfigError):
            PostgresSettings.from_url(bad)


def test_node_config_accepts_postgres_urls() -> None:
    app = App("cfg")
    for url in ("postgresql://h/db", "postgres://h/db"):
        assert NodeConfig(app=app, storage=url).storage == url
    with pytest.raises(ConfigError, match="postgresql://"):
        NodeConfig(app=app, storage="mysql://h/db")


def test_migrations_apply_once_when_nodes_start_together(schema: str) -> None:
    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(migrate(url_for(schema)) for _ in range(4))))

    results = asyncio.run(main())
    every = list(range(1, SCHEMA_VERSION + 1))  # 1: jobs, 2: cron, 3: paused queues, 4-5: indexes
    assert sorted(results) == [[], [], [], every]

    async def versions() -> set[int]:
        conn = await asyncpg.connect(DSN)
        try:
            return set(await applied_versions(conn, schema))
        finally:
            await conn.close()

    assert asyncio.run(versions()) == set(every)


def test_migrate_command_prints_or_applies_the_sql(schema: str) -> None:
    url = url_for(schema)
    printed = subprocess.run([sys.executable, "-m", "gotask.cli", "migrate", "--storage", url,
                              "--print-sql"], capture_output=True, text=True, check=True)
    assert f'CREATE TABLE "{schema}".jobs' in printed.stdout
    assert printed.stdout.startswith("BEGIN;") and printed.stdout.endswith("COMMIT;\n")
    subprocess.run(["psql", DSN, "-q", "-v", "ON_ERROR_STOP=1"], input=printed.stdout,
                   text=True, check=True, capture_output=True)
    again = subprocess.run([sys.executable, "-m", "gotask.cli", "migrate", "--storage", url],
                           capture_output=True, text=True, check=True)
    assert again.stdout.strip() == f"schema {schema}: up to date"


def test_unreachable_database_is_storage_unavailable() -> None:
    async def main() -> None:
        await open_postgres_storage("postgresql://postgres@127.0.0.1:1/nothing")

    with pytest.raises(StorageUnavailable, match="cannot reach PostgreSQL"):
        trio.run(main)


# -- the backend's own rules ---------------------------------------------------------------------


def _backend_run(schema: str, body: Any) -> Any:
    async def main() -> Any:
        backend = PostgresBackend(PostgresSettings.from_url(url_for(schema)))
        await backend.open(subscribe=False)
        try:
            return await body(backend)
        finally:
            await backend.close()
    return asyncio.run(main())


def test_the_database_clock_is_used_when_none_is_pinned(schema: str) -> None:
    async def body(backend: PostgresBackend) -> Any:
        conn = await asyncpg.connect(DSN)
        try:
            before = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())")
            job = new_job()
            await backend.execute([EnqueueJobs((job,))])
            after = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())")
        finally:
            await conn.close()
        (got,) = await backend.execute([GetJobs((job.id,))])
        return float(before), got.jobs[0].created_at, float(after)

    before, created, after = _backend_run(schema, body)
    assert before <= created <= after


def test_a_refused_command_fails_alone_and_its_batch_runs(schema: str, monkeypatch: Any) -> None:
    import gotask.actors.storage._postgres_backend as pb

    monkeypatch.setattr(pb, "NODES_MAX", 1)

    async def body(backend: PostgresBackend) -> Any:
        job = new_job()
        return await backend.execute([
            RegisterNode("a", {}, 10.0), EnqueueJobs((job,)), RegisterNode("b", {}, 10.0),
            CountJobs(), "not a command"], 1000.0)

    reg, enq, full, counts, bad = _backend_run(schema, body)
    assert reg.expires_at == 1010.0 and enq.created == (True,)
    assert isinstance(full, StorageFull) and isinstance(bad, TypeError)
    assert counts.counts == (QueueCount("default", "queued", 1),)


def test_counts_come_from_counters_not_from_a_scan_of_the_jobs(schema: str) -> None:
    async def body(backend: PostgresBackend) -> Any:
        await backend.execute([EnqueueJobs((new_job(), new_job(), new_job("b")))], 1000.0)
        (first,) = await backend.execute([CountJobs()])
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DELETE FROM "{schema}".jobs')  # behind the functions' back
            deltas = await conn.fetchval(f'SELECT count(*) FROM "{schema}".count_deltas')
        finally:
            await conn.close()
        (second,) = await backend.execute([CountJobs()])
        return first, deltas, second

    first, deltas, second = _backend_run(schema, body)
    assert first.counts == (QueueCount("b", "queued", 1), QueueCount("default", "queued", 2))
    assert deltas == 0  # folded into the counters by the count
    assert second == first


def test_events_merge_notifications() -> None:
    events = parse_events(['["r", "a"]', '["r", "a"]', '["d", "b", 12.5]',
                           '["c", "J1", "n1", 3]', '["i", "J2"]'])
    assert events.ready == frozenset({"a"}) and events.due == (("b", 12.5),)
    assert events.cancels == (("J1", "n1", 3),) and events.ids == frozenset({"J2"})
    assert events.now is None


# -- the actor --------------------------------------------------------------------------------


class TestPostgresShell(StorageShellContract):
    @pytest.fixture
    async def actor(self) -> AsyncIterator[Actor]:
        name = unique_schema("s")
        storage = await open_postgres_storage(url_for(name))
        try:
            async with open_node("solo") as node:
                addr = await node.start_actor(STORAGE, _partial(storage), inbox_max=4096)
                yield node, addr
        finally:
            await storage.aclose()
            drop_schema(name)


@pytest.fixture
async def actor() -> AsyncIterator[tuple[Any, Address, str]]:
    name = unique_schema("a")
    storage = await open_postgres_storage(url_for(name))
    try:
        async with open_node("solo") as node:
            addr = await node.start_actor(STORAGE, _partial(storage), inbox_max=4096)
            yield node, addr, name
    finally:
        await storage.aclose()
        drop_schema(name)


async def test_parked_lease_wakes_on_enqueue(actor: tuple[Any, Address, str]) -> None:
    node, addr, _ = actor
    lease = LeaseJobs("solo", (QueueWeight("default"),), 4, 30.0)
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        async def wait() -> None:
            got.append(await node.call(addr, LeaseWait(lease, 10.0)))
        nursery.start_soon(wait)
        await trio.sleep(0.3)
        assert not got
        started = trio.current_time()
        job = new_job()
        await node.call(addr, EnqueueJobs((job,)))
    assert [j.id for j in got[0].jobs] == [job.id]
    assert trio.current_time() - started < 1.0


async def test_parked_lease_wakes_when_a_delayed_job_is_due(
        actor: tuple[Any, Address, str]) -> None:
    node, addr, _ = actor
    job = new_job(delay_s=0.5)
    await node.call(addr, EnqueueJobs((job,)))
    lease = LeaseJobs("solo", (QueueWeight("default"),), 4, 30.0)
    started = trio.current_time()
    reply = await node.call(addr, LeaseWait(lease, 10.0))
    assert [j.id for j in reply.jobs] == [job.id]
    assert 0.3 < trio.current_time() - started < 2.0


async def test_watchers_get_changes_until_terminal(actor: tuple[Any, Address, str]) -> None:
    node, addr, _ = actor
    inbox = node.open_inbox("watcher")
    job = new_job()
    await node.call(addr, EnqueueJobs((job,)))
    reply = await node.call(addr, WatchJobs((job.id,), Address("solo", "watcher")))
    assert reply.jobs[0].state == "queued"
    await node.call(addr, CancelJobs((job.id,)))
    with trio.fail_after(5):
        env = await inbox.receive()
    assert isinstance(env.msg, JobChanged) and env.msg.job.state == "cancelled"


async def test_transactional_enqueue_commits_or_rolls_back_with_the_caller(
        actor: tuple[Any, Address, str]) -> None:
    node, addr, name = actor
    lease = LeaseJobs("solo", (QueueWeight("mail"),), 4, 30.0)
    sql, params = enqueue_statement("send", [1, "x"], {"k": b"\x00"}, schema=name, queue="mail")
    assert params[3] == pack_args([1, "x"], {"k": b"\x00"})

    async def in_transaction(commit: bool) -> str:
        conn = await asyncpg.connect(DSN)
        try:
            tr = conn.transaction()
            await tr.start()
            job_id, created = await conn.fetchrow(sql, *params)
            assert created
            await (tr.commit() if commit else tr.rollback())
            return str(job_id)
        finally:
            await conn.close()

    rolled_back = await trio.to_thread.run_sync(asyncio.run, in_transaction(False))
    assert (await node.call(addr, GetJobs((rolled_back,)))).jobs == (None,)
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        async def wait() -> None:
            got.append(await node.call(addr, LeaseWait(lease, 10.0)))
        nursery.start_soon(wait)
        await trio.sleep(0.3)
        started = trio.current_time()
        sql, params = enqueue_statement("send", [2], schema=name, queue="mail")
        committed = await trio.to_thread.run_sync(asyncio.run, in_transaction(True))
    assert [j.id for j in got[0].jobs] == [committed]
    assert trio.current_time() - started < 1.0
    assert msgpack.unpackb(got[0].jobs[0].args) == [[2], {}]


def test_enqueue_statement_speaks_dbapi_format_and_applies_task_defaults() -> None:
    sql, params = enqueue_statement("add", [1, 2], paramstyle="format", app=app,
                                    idempotency_key="k1")
    assert sql.count("%s") == 10 and "$1" not in sql and '"gotask".enqueue(' in sql
    assert params[2] == "sums" and params[6] == 5 and params[9] == "k1"
    with pytest.raises(ValueError, match="paramstyle"):
        enqueue_statement("add", paramstyle="qmark")
    with pytest.raises(TypeError):
        enqueue_statement("add", [1], app=app)


async def test_another_node_s_changes_wake_leases_and_reach_watchers(schema: str) -> None:
    url = url_for(schema)
    first, second = await open_postgres_storage(url), await open_postgres_storage(url)
    try:
        async with open_node("a") as a, open_node("b") as b:
            at_a = await a.start_actor(STORAGE, _partial(first), inbox_max=4096)
            at_b = await b.start_actor(STORAGE, _partial(second), inbox_max=4096)
            inbox, workers = a.open_inbox("watcher"), a.open_inbox(WORKERS)
            job = new_job()
            lease = LeaseJobs("a", (QueueWeight("default"),), 4, 30.0)
            with trio.fail_after(3):  # woken by b's notification, not the 10 s deadline
                async with trio.open_nursery() as nursery:
                    async def park() -> None:
                        reply = await a.call(at_a, LeaseWait(lease, 10.0))
                        assert [j.id for j in reply.jobs] == [job.id]
                    nursery.start_soon(park)
                    await trio.sleep(0.3)
                    await b.call(at_b, EnqueueJobs((job,)))
            await a.call(at_a, WatchJobs((job.id,), Address("a", "watcher")))
            await b.call(at_b, CancelJobs((job.id,)))  # running: cancellation requested
            with trio.fail_after(5):
                env = await inbox.receive()
            assert isinstance(env.msg, JobChanged) and env.msg.job.cancel_requested
            with trio.fail_after(5):
                env = await workers.receive()
            assert env.msg == CancelRunning((LeaseToken(job.id, 1),))
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_dropped_listener_is_listened_again_and_counted(schema: str) -> None:
    storage = await open_postgres_storage(url_for(schema))
    try:
        async with open_node("solo") as node:
            addr = await node.start_actor(STORAGE, _partial(storage), inbox_max=4096)
            conn = await trio.to_thread.run_sync(asyncio.run, _terminate_listeners(schema))
            assert conn == 1
            with trio.fail_after(10):
                while storage.backend.listener_reconnects < 1:
                    await trio.sleep(0.05)
            lease = LeaseJobs("solo", (QueueWeight("default"),), 4, 30.0)
            got: list[Any] = []
            async with trio.open_nursery() as nursery:
                async def wait() -> None:
                    got.append(await node.call(addr, LeaseWait(lease, 10.0)))
                nursery.start_soon(wait)
                await trio.sleep(0.3)
                started = trio.current_time()
                job = new_job()
                await node.call(addr, EnqueueJobs((job,)))
            assert [j.id for j in got[0].jobs] == [job.id]
            assert trio.current_time() - started < 1.0
    finally:
        await storage.aclose()


async def _terminate_listeners(schema: str) -> int:
    conn = await asyncpg.connect(DSN)
    try:
        pids = await conn.fetch(
            "SELECT l.pid FROM pg_stat_activity l WHERE l.query LIKE $1",
            f'LISTEN "{schema}_events"%')
        for row in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", row[0])
        return len(pids)
    finally:
        await conn.close()


# -- a cluster of two nodes on one PostgreSQL ----------------------------------------------------

app = App("postgres-cluster-tests")


@app.task(name="add", queue="sums", max_attempts=5)
async def add(x: int, y: int) -> int:
    return x + y


@asynccontextmanager
async def two_nodes(schema: str) -> AsyncIterator[tuple[Server, Server]]:
    """Nodes "a" and "b" working queue "sums" on one schema."""
    url = url_for(schema)
    config_a = NodeConfig(app=app, name="a", storage=url, listen=None, queues=(("sums", 1),))
    config_b = NodeConfig(app=app, name="b", storage=url, listen=None, queues=(("sums", 1),))
    async with open_server(config_a, listen=False) as a, \
            open_server(config_b, listen=False) as b:
        yield a, b


async def test_two_nodes_share_jobs_through_postgres(schema: str) -> None:
    async with two_nodes(schema) as (a, b):
        item = JobSpec("add", pack_args([2, 3], {}))
        ids = (await a.node.call(a.broker, Enqueue((item,) * 200))).ids
        started = trio.current_time()
        done = await b.node.call(b.node.address(BROKER), WaitJobs(ids, 30.0), timeout_s=40)
        # Woken by notifications, not by a parked lease's 5 s timeout.
        assert trio.current_time() - started < 4.0
        assert {j.state for j in done.jobs if j is not None} == {"succeeded"}
        assert {msgpack.unpackb(j.result) for j in done.jobs if j is not None} == {5}
        counts = await a.node.call(a.storage, CountJobs())
        assert counts.counts == (QueueCount("sums", "succeeded", 200),)


async def test_a_queue_paused_through_one_node_waits_on_both_until_resumed(schema: str) -> None:
    async with two_nodes(schema) as (a, b):
        await pause_holds_on_both_nodes(a, b, "sums")


def test_adjacent_enqueues_and_acks_of_a_batch_answer_as_one_by_one(schema: str) -> None:
    a, b, c = new_job(), new_job(idempotency_key="k"), new_job(idempotency_key="k")

    async def body(backend: PostgresBackend) -> Any:
        enqueued = await backend.execute(
            [EnqueueJobs((a,)), EnqueueJobs((b, a)), EnqueueJobs((c,)), CountJobs()], 1000.0)
        (leased,) = await backend.execute(
            [LeaseJobs("n", (QueueWeight("default"),), 10, 30.0)], 1000.0)
        t1, t2 = (LeaseToken(j.id, j.attempt) for j in leased.reply.jobs)
        acked = await backend.execute(
            [AckJobs((AckItem(t1.job_id, t1.attempt, b"\xc0"),)),
             AckJobs((AckItem(t1.job_id, t1.attempt, b"\xc0"),
                      AckItem(t2.job_id, t2.attempt + 1, b"\xc0"))),
             AckJobs((AckItem(t2.job_id, t2.attempt, b"\xc0"),))], 1000.0)
        return enqueued, acked

    enqueued, acked = _backend_run(schema, body)
    assert [(r.ids, r.created) for r in enqueued[:3]] == [
        ((a.id,), (True,)), ((b.id, a.id), (True, False)), ((b.id,), (False,))]
    assert enqueued[3].counts == (QueueCount("default", "queued", 2),)
    assert [r.statuses for r in acked] == [("ok",), ("duplicate", "stale"), ("ok",)]


def test_a_server_without_autovacuum_is_warned_about(schema: str, caplog: Any) -> None:
    async def body(backend: PostgresBackend) -> Any:
        conn = await asyncpg.connect(DSN)
        try:
            return await conn.fetchval("SHOW autovacuum")
        finally:
            await conn.close()

    with caplog.at_level("WARNING", logger="gotask.storage.postgres"):
        setting = _backend_run(schema, body)
    warned = any("autovacuum off" in r.getMessage() for r in caplog.records)
    assert warned == (setting != "on"), (setting, caplog.text)
