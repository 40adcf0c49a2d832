"""The SQLite backend in a node: the writer thread's batches, the shell's commit seam,
and a node that stops and starts again on the same file."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from gotask._app import App, pack_args
from gotask._errors import RemoteActorError, StorageError, StorageUnavailable
from gotask._messages import STORAGE, Enqueue, EnqueueItem, LeaseWait, WaitJobs
from gotask._server import open_server
from gotask.actors.storage.actor import run_storage
from gotask.actors.storage.base import (
    CountJobs,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    GetJobsReply,
    LeaseJobs,
    QueueWeight,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.actors.storage.sqlite import SqliteStorage, open_sqlite_storage
from gotask.config import NodeConfig
from gotask.runtime import open_node

from .contract import new_job

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
    replies = await storage.execute([EnqueueJobs((job,)), lease, "bogus", GetJobs((job.id,))],
                                    START_S)
    assert replies[0] == EnqueueReply((job.id,), (True,))
    assert [(j.id, j.attempt) for j in replies[1].jobs] == [(job.id, 1)]
    assert isinstance(replies[2], TypeError)
    assert replies[3].jobs[0].state == "active"
    with pytest.raises(ValueError, match="needs `now` or a clock"):
        await storage.execute([CountJobs()])


async def test_a_batch_that_cannot_commit_answers_every_command_with_the_error(
    storage: SqliteStorage,
) -> None:
    kept = new_job()
    await storage.execute([EnqueueJobs((kept,))], START_S)

    def fill_up() -> None:
        conn = storage.core.connection
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await storage.writer.run(fill_up)
    big = EnqueueJobs(tuple(new_job() for _ in range(2000)))
    replies = await storage.execute([EnqueueJobs((new_job(),)), big, CountJobs()], START_S)
    assert all(isinstance(r, StorageUnavailable) for r in replies), replies
    assert "database or disk is full" in str(replies[0])
    (count,) = await storage.execute([CountJobs()], START_S)
    assert [(c.queue, c.state, c.count) for c in count.counts] == [("default", "queued", 1)]


async def test_the_lock_refuses_a_second_owner(storage: SqliteStorage) -> None:
    with pytest.raises(StorageError, match="in use by another GoTask node"):
        await open_sqlite_storage(f"sqlite://{storage.settings.path}")


# -- the shell's commit seam ---------------------------------------------------------------


async def test_replies_wait_for_the_commit() -> None:
    gate, commits = trio.Event(), []

    async def commit() -> None:
        await gate.wait()
        commits.append(1)

    async with open_node("solo") as node:
        addr = await node.start_actor(STORAGE, functools.partial(
            run_storage, core=MemoryStorageCore(), commit=commit), inbox_max=64)
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            async def enqueue() -> None:
                got.append(await node.call(addr, EnqueueJobs((new_job(),))))
            nursery.start_soon(enqueue)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            gate.set()
        assert got[0].created == (True,) and commits == [1]


async def test_a_failed_commit_answers_the_batch_with_its_error() -> None:
    async def commit() -> None:
        raise StorageUnavailable("SQLite storage cannot write: database or disk is full")

    async with open_node("solo") as node:
        addr = await node.start_actor(STORAGE, functools.partial(
            run_storage, core=MemoryStorageCore(), commit=commit), inbox_max=64)
        with pytest.raises(RemoteActorError, match="database or disk is full"):
            await node.call(addr, EnqueueJobs((new_job(),)))
        lease = LeaseJobs("solo", (QueueWeight("default"),), 4, 30.0)
        with pytest.raises(RemoteActorError, match="disk is full"):
            await node.call(addr, LeaseWait(lease, 0.0))


# -- a node on a SQLite file -----------------------------------------------------------------

app = App("sqlite-node-tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


async def test_a_node_keeps_its_jobs_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/data/gotask.db"
    config = NodeConfig(app=app, name="owner", storage=url, listen=None)
    item = EnqueueItem("add", pack_args([2, 3], {}))
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
    await storage.execute([EnqueueJobs((job,))], START_S)
    reader = sqlite3.connect(f"file:{storage.settings.path}?mode=ro", uri=True)
    try:
        counts = reader.execute("SELECT queue, state, n FROM counts WHERE n > 0").fetchall()
        assert counts == [("default", "queued", 1)]
        lease = LeaseJobs("n1", (QueueWeight("default"),), 5, 30.0)
        (leased,) = await storage.execute([lease], START_S)  # the reader does not block it
        assert [j.id for j in leased.jobs] == [job.id]
        state = reader.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
        assert state == ("active",)
    finally:
        reader.close()
