"""The SQLite backend: the storage contract, the stateful test, and its file's rules."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gotask.actors.storage._sqlite_core import SqliteStorageCore
from gotask.actors.storage._sqlite_schema import SqliteSettings, open_database
from gotask.actors.storage.base import Command

from .contract import StorageContract, make_state_machine

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


TestSqliteStateMachine = make_state_machine(lambda: SqliteHarness("NORMAL"))
