"""The SQLite backend in a node: the writer thread's batches and group commit, the one
storage shell over it, and a node that stops and starts again on the same file."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from gotask._app import App, pack_args
from gotask._errors import RemoteActorError, StorageError, StorageUnavailable
from gotask._messages import STORAGE, LeaseWait
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import open_server
from gotask.actors.storage._backend import Leased, WatchRead
from gotask.actors.storage.actor import run_storage
from gotask.actors.storage.base import (
    CountJobs,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    GetJobsReply,
    LeaseJobs,
    LeaseReply,
    QueueCount,
    QueueWeight,
)
from gotask.actors.storage.sqlite import SqliteStorage, open_sqlite_storage
from gotask.config import NodeConfig
from gotask.runtime import open_node

from .contract import new_job
from .shell_contract import Actor, StorageShellContract

START_S = 1_700_000_000.0


@pytest.fixture
async def storage(tmp_path: Path) -> Any:
    opened = await open_sqlite_storage(f"sqlite://{tmp_path}/gotask.db")
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_batch_runs_in_order_in_one_crossing(storage: SqliteStorage) -> None:
    job = new_job()
    lease = LeaseJobs("n1", (QueueWeight("default"),), 5, 30.0)
    replies = await storage.submit(
        [EnqueueJobs((job,)), lease, "bogus", GetJobs((job.id,)), WatchRead((job.id,))],
        START_S).wait()
    assert replies[0] == EnqueueReply((job.id,), (True,))
    assert isinstance(replies[1], Leased) and replies[1].now == START_S
    assert [(j.id, j.attempt) for j in replies[1].reply.jobs] == [(job.id, 1)]
    assert isinstance(replies[2], TypeError)
    assert replies[3].jobs[0].state == "active" and replies[4] == replies[3]


async def test_an_empty_lease_tells_the_next_due_time(storage: SqliteStorage) -> None:
    lease = LeaseJobs("n1", (QueueWeight("default"),), 5, 30.0)
    (empty,) = await storage.submit([lease], START_S).wait()
    assert empty == Leased(LeaseReply(()), START_S, None)
    later = attrs.evolve(new_job(), delay_s=7.5)
    _, leased = await storage.submit([EnqueueJobs((later,)), lease], START_S).wait()
    assert leased.reply.jobs == () and leased.next_due == START_S + 7.5


async def test_batches_waiting_for_the_thread_share_one_commit(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    core_commit = storage.core.commit
    gate = threading.Event()

    def commit() -> None:
        gate.wait(5.0)
        commits.append(storage.core.connection.total_changes)
        core_commit()

    monkeypatch.setattr(storage.core, "commit", commit)
    first = storage.submit([EnqueueJobs((new_job(),))], START_S)
    await trio.sleep(0.05)  # the first group is in its commit: the next ones wait
    rest = [storage.submit([EnqueueJobs((new_job(),))], START_S) for _ in range(5)]
    gate.set()
    for pending in [first, *rest]:
        (reply,) = await pending.wait()
        assert reply.created == (True,)
    assert len(commits) == 2
    (count,) = await storage.submit([CountJobs()], START_S).wait()
    assert count.counts == (QueueCount("default", "queued", 6),)


async def test_replies_wait_for_the_commit(storage: SqliteStorage,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gate, core_commit = threading.Event(), storage.core.commit

    def commit() -> None:
        gate.wait(5.0)
        core_commit()

    monkeypatch.setattr(storage.core, "commit", commit)
    async with open_node("solo") as node:
        addr = await node.start_actor(STORAGE, functools.partial(
            run_storage, backend=storage), inbox_max=64)
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            async def enqueue() -> None:
                got.append(await node.call(addr, EnqueueJobs((new_job(),))))
            nursery.start_soon(enqueue)
            await trio.sleep(0.1)
            assert got == []
            gate.set()
        assert got[0].created == (True,)


async def test_a_failed_commit_answers_the_batch_with_its_error(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def commit() -> None:
        storage.core.rollback()
        raise StorageUnavailable("SQLite storage cannot write: database or disk is full")

    monkeypatch.setattr(storage.core, "commit", commit)
    async with open_node("solo") as node:
        addr = await node.start_actor(STORAGE, functools.partial(
            run_storage, backend=storage), inbox_max=64)
        job = new_job()
        with pytest.raises(RemoteActorError, match="database or disk is full"):
            await node.call(addr, EnqueueJobs((job,)))
        lease = LeaseJobs("solo", (QueueWeight("default"),), 4, 30.0)
        with pytest.raises(RemoteActorError, match="disk is full"):
            await node.call(addr, LeaseWait(lease, 0.0))
    monkeypatch.undo()
    (got,) = await storage.submit([GetJobs((job.id,))], START_S).wait()
    assert got.jobs == (None,)


async def test_a_batch_that_cannot_commit_answers_every_command_with_the_error(
    storage: SqliteStorage,
) -> None:
    kept = new_job()
    await storage.submit([EnqueueJobs((kept,))], START_S).wait()

    def fill_up() -> None:
        conn = storage.core.connection
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await storage.writer.run(fill_up)
    big = EnqueueJobs(tuple(new_job() for _ in range(2000)))
    replies = await storage.submit([EnqueueJobs((new_job(),)), big, CountJobs()], START_S).wait()
    assert all(isinstance(r, StorageUnavailable) for r in replies), replies
    assert "database or disk is full" in str(replies[0])
    (count,) = await storage.submit([CountJobs()], START_S).wait()
    assert [(c.queue, c.state, c.count) for c in count.counts] == [("default", "queued", 1)]


async def test_the_lock_refuses_a_second_owner(storage: SqliteStorage) -> None:
    with pytest.raises(StorageError, match="in use by another GoTask node"):
        await open_sqlite_storage(f"sqlite://{storage.settings.path}")


class TestSqliteShell(StorageShellContract):
    @pytest.fixture
    async def actor(self, storage: SqliteStorage) -> AsyncIterator[Actor]:
        async with open_node("solo") as node:
            addr = await node.start_actor(STORAGE, functools.partial(
                run_storage, backend=storage), inbox_max=4096)
            yield node, addr


# -- a node on a SQLite file -----------------------------------------------------------------

app = App("sqlite-node-tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


async def test_a_node_keeps_its_jobs_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/data/gotask.db"
    config = NodeConfig(app=app, name="owner", storage=url, listen=None)
    item = JobSpec("add", pack_args([2, 3], {}))
    async with open_server(config, listen=False) as server:
        ids = (await server.node.call(server.broker, Enqueue((item,) * 50))).ids
        done = await server.node.call(server.broker, WaitJobs(ids, 20.0))
        assert {j.state for j in done.jobs if j is not None} == {"succeeded"}
        with pytest.raises(StorageError, match="in use by another GoTask node"):
            async with open_server(attrs.evolve(config, name="second"), listen=False):
                pass
    async with open_server(config, listen=False) as again:
        reply = await again.node.call(again.storage, GetJobs(ids))
        assert isinstance(reply, GetJobsReply)
        assert [j.state if j else None for j in reply.jobs] == ["succeeded"] * 50
        assert {j.result for j in reply.jobs if j} == {b"\x05"}


async def test_the_default_file_and_a_sync_mode_from_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    opened = await open_sqlite_storage("sqlite://?synchronous=NORMAL")
    try:
        conn = opened.core.connection
        level = await opened.writer.run(
            lambda: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert level == 1
        assert (tmp_path / ".gotask" / "gotask.db").is_file()
    finally:
        await opened.aclose()


async def test_a_reader_may_look_while_the_node_writes(storage: SqliteStorage) -> None:
    job = new_job()
    await storage.submit([EnqueueJobs((job,))], START_S).wait()
    reader = sqlite3.connect(f"file:{storage.settings.path}?mode=ro", uri=True)
    try:
        counts = reader.execute("SELECT queue, state, n FROM counts WHERE n > 0").fetchall()
        assert counts == [("default", "queued", 1)]
        lease = LeaseJobs("n1", (QueueWeight("default"),), 5, 30.0)
        (leased,) = await storage.submit([lease], START_S).wait()  # the reader does not block it
        assert [j.id for j in leased.reply.jobs] == [job.id]
        state = reader.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
        assert state == ("active",)
    finally:
        reader.close()
