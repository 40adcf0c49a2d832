"""The SQLite backend: the storage contract, the stateful test, and its file's rules."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import pytest

from gotask._errors import ConfigError, StorageError, StorageUnavailable
from gotask.actors.storage._sqlite_core import _READY, SqliteStorageCore
from gotask.actors.storage._sqlite_schema import (
    APPLICATION_ID,
    DEFAULT_PATH,
    SCHEMA_VERSION,
    SqliteSettings,
    open_database,
)
from gotask.actors.storage.base import Command, CountJobs, EnqueueJobs, GetJobs, QueueCount

from .contract import StorageContract, make_state_machine, new_job

R = TypeVar("R")
START_S = 1_700_000_000.0


class SqliteHarness:
    """A SQLite core on a file of its own, one transaction per command, and a fake clock."""

    def __init__(self, synchronous: str = "FULL") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gotask-sqlite-"))
        settings = SqliteSettings(self.dir / "gotask.db", synchronous)
        self.conn, self.lock = open_database(settings)
        self.core = SqliteStorageCore(self.conn)
        self.clock = START_S

    def execute(self, cmd: Command[R]) -> R:
        try:
            reply = self.core.handle(cmd, self.clock)
        except BaseException:
            self.core.commit()
            raise
        self.core.commit()
        return reply

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock

    def close(self) -> None:
        self.conn.close()
        self.lock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class TestSqliteStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[SqliteHarness]:
        harness = SqliteHarness()
        yield harness
        harness.close()


# NORMAL skips the fsync of each commit: the semantics are the same, and the hundreds of
# examples take seconds instead of minutes. The contract tests above run with FULL.
TestSqliteStateMachine = make_state_machine(lambda: SqliteHarness("NORMAL"))


# -- the file: URL, modes, lock, foreign and corrupt files, migrations ----------------------


def test_settings_parse_the_url() -> None:
    assert SqliteSettings.from_url("sqlite:///tmp/x.db") == SqliteSettings(Path("/tmp/x.db"))
    assert SqliteSettings.from_url("sqlite://d/x.db?synchronous=normal") == \
        SqliteSettings(Path("d/x.db"), "NORMAL")
    assert SqliteSettings.from_url("sqlite://").path == Path(DEFAULT_PATH)
    with pytest.raises(ConfigError, match="synchronous=FULL or synchronous=NORMAL"):
        SqliteSettings.from_url("sqlite:///x.db?synchronous=OFF")
    with pytest.raises(ConfigError, match="not a SQLite URL"):
        SqliteSettings.from_url("memory://")


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "gotask.db"
    conn, lock = open_database(SqliteSettings(path))
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("COMMIT")
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for name in ("gotask.db", "gotask.db-wal", "gotask.db.lock"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    finally:
        conn.close()
        lock.close()


def test_a_second_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gotask.db"
    conn, lock = open_database(SqliteSettings(path))
    try:
        code = ("import sys; from pathlib import Path; "
                "from gotask.actors.storage._sqlite_schema import SqliteSettings, open_database; "
                "open_database(SqliteSettings(Path(sys.argv[1])))")
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0
        assert f"is in use by another GoTask node (pid {os.getpid()})" in proc.stderr
        assert "--join that node instead" in proc.stderr
    finally:
        conn.close()
        lock.close()
    conn, lock = open_database(SqliteSettings(path))  # free again once the owner closed it
    conn.close()
    lock.close()


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (text)")
    other.commit()
    other.close()
    with pytest.raises(StorageError, match=r"not a GoTask database .*foreign SQLite file") as info:
        open_database(SqliteSettings(path))
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gotask.db"
    path.write_bytes(b"this is no database at all, just text " * 200)
    with pytest.raises(StorageError, match="not a usable GoTask database: file is not a database"):
        open_database(SqliteSettings(path))
    assert path.read_bytes().startswith(b"this is no database")  # left as it was


def test_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gotask.db"
    harness_settings = SqliteSettings(path)
    conn, lock = open_database(harness_settings)
    core = SqliteStorageCore(conn)
    core.handle(EnqueueJobs(tuple(new_job() for _ in range(500))), START_S)
    core.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    lock.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data) - page, page):
        data[offset:offset + 64] = b"\xff" * 64  # smash the header of every later page
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"corrupt|malformed|not a usable") as info:
        open_database(harness_settings)
    assert "\n" not in str(info.value)


def test_a_newer_schema_is_refused_and_an_older_migrated(tmp_path: Path) -> None:
    path = tmp_path / "gotask.db"
    conn, lock = open_database(SqliteSettings(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    lock.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        open_database(SqliteSettings(path))
    fresh = tmp_path / "fresh.db"
    raw = sqlite3.connect(fresh)
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # version 0: no schema yet
    raw.close()
    conn, lock = open_database(SqliteSettings(fresh))
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert SqliteStorageCore(conn).handle(CountJobs(), START_S).counts == ()
    finally:
        conn.close()
        lock.close()


def test_pragmas_follow_the_url(tmp_path: Path) -> None:
    for mode, level in (("FULL", 2), ("NORMAL", 1)):
        conn, lock = open_database(SqliteSettings(tmp_path / f"{mode}.db", mode))
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        finally:
            conn.close()
            lock.close()


# -- the core: batches, failures, indexes ---------------------------------------------------


@pytest.fixture
def harness() -> Iterator[SqliteHarness]:
    h = SqliteHarness()
    yield h
    h.close()


def test_a_batch_is_one_transaction(harness: SqliteHarness) -> None:
    core, job = harness.core, new_job()
    core.handle(EnqueueJobs((job,)), START_S)
    core.rollback()
    assert harness.execute(GetJobs((job.id,))).jobs == (None,)
    core.handle(EnqueueJobs((job,)), START_S)
    with pytest.raises(TypeError, match="not a storage command: str"):
        core.handle("lease", START_S)  # type: ignore[arg-type]
    core.commit()  # the bad command was undone alone
    assert harness.execute(GetJobs((job.id,))).jobs[0] is not None


def test_disk_full_fails_the_whole_batch(harness: SqliteHarness) -> None:
    core, kept = harness.core, new_job()
    harness.execute(EnqueueJobs((kept,)))
    pages = harness.conn.execute("PRAGMA page_count").fetchone()[0]
    harness.conn.execute(f"PRAGMA max_page_count = {pages}")
    small = new_job()
    core.handle(EnqueueJobs((small,)), START_S)
    big = tuple(attrs.evolve(new_job(), args=b"\x90" * 4000) for _ in range(50))
    with pytest.raises(StorageUnavailable, match="database or disk is full"):
        core.handle(EnqueueJobs(big), START_S)
    with pytest.raises(StorageUnavailable):
        core.handle(CountJobs(), START_S)  # the batch is lost: nothing more runs in it
    with pytest.raises(StorageUnavailable, match="database or disk is full"):
        core.commit()
    harness.conn.execute("PRAGMA max_page_count = 1073741823")
    got = harness.execute(GetJobs((kept.id, small.id, big[0].id))).jobs
    assert [j is not None for j in got] == [True, False, False]
    assert harness.execute(EnqueueJobs(big)).created == (True,) * 50


def test_hot_queries_use_their_indexes(harness: SqliteHarness) -> None:
    plans = {
        _READY: ("default", 10),
        "SELECT seq FROM jobs WHERE state = 'scheduled' AND due_at <= ? ORDER BY due_at, seq":
            (START_S,),
        "SELECT id FROM jobs WHERE state = 'active' AND lease_expires_at <= ? "
        "ORDER BY lease_expires_at": (START_S,),
        "SELECT seq FROM jobs WHERE expires_at <= ? AND state IN ('succeeded', 'cancelled') "
        "ORDER BY expires_at": (START_S,),
        "SELECT id FROM jobs WHERE idempotency_key = ?": ("k",),
    }
    for sql, args in plans.items():
        plan = " ".join(row[-1] for row in harness.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (sql, plan)
        assert "TEMP B-TREE" not in plan, (sql, plan)


def test_counts_are_kept_not_scanned(harness: SqliteHarness) -> None:
    harness.execute(EnqueueJobs(tuple(new_job("q") for _ in range(3))))
    plan = " ".join(row[-1] for row in harness.conn.execute(
        "EXPLAIN QUERY PLAN SELECT queue, state, n FROM counts WHERE n > 0"))
    assert "jobs" not in plan
    assert harness.execute(CountJobs()).counts == (QueueCount("q", "queued", 3),)


def test_an_illegal_move_is_refused_by_the_schema(harness: SqliteHarness) -> None:
    job = new_job()
    harness.execute(EnqueueJobs((job,)))
    with pytest.raises(sqlite3.IntegrityError, match="illegal job state transition"):
        harness.conn.execute("UPDATE jobs SET state = 'succeeded' WHERE id = ?", (job.id,))


def test_a_version_1_database_gains_the_cron_table_and_keeps_its_jobs(tmp_path: Path) -> None:
    from gotask.actors.storage._sqlite_schema import MIGRATIONS, _statements
    from gotask.actors.storage.base import CronDef, CronList, CronRegister, SetQueuePaused

    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    for statement in _statements(MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    job = new_job()
    SqliteStorageCore(raw).handle(EnqueueJobs((job,)), START_S)
    raw.execute("COMMIT")
    raw.close()
    conn, lock = open_database(SqliteSettings(path))
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        core = SqliteStorageCore(conn)
        (kept,) = core.handle(GetJobs((job.id,)), START_S).jobs
        assert kept is not None and (kept.history, kept.history_dropped) == ((), 0)
        core.handle(CronRegister("n1", (CronDef("e", "E"),)), START_S)
        assert core.handle(SetQueuePaused("q", True), START_S).paused == ("q",)
        assert [s.name for s in core.handle(CronList(), START_S).states] == ["e"]
        core.commit()
    finally:
        conn.close()
        lock.close()


def test_paused_queues_survive_a_restart(tmp_path: Path) -> None:
    from gotask.actors.storage.base import QueueInfo, SetQueuePaused

    settings = SqliteSettings(tmp_path / "paused.db")
    conn, lock = open_database(settings)
    core = SqliteStorageCore(conn)
    core.handle(SetQueuePaused("mail", True), START_S)
    core.handle(EnqueueJobs((new_job("mail"),)), START_S)
    core.commit()
    conn.close()
    lock.close()
    conn, lock = open_database(settings)
    try:
        assert SqliteStorageCore(conn).handle(QueueInfo(), START_S).paused == ("mail",)
    finally:
        conn.close()
        lock.close()
