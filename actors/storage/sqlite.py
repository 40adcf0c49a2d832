"""The SQLite storage backend: the storage contract in one local file, durable by default.

Rules of the SQLite backend (this module and the `_sqlite_*` modules it is split into):
- One node process owns the file (`_sqlite_schema`: an exclusive lock, private modes,
  a versioned schema migrated at start; a foreign or corrupt file is refused). Other
  nodes `--join` the owner, as with memory storage.
- `SqliteStorageCore.handle(cmd, now)` applies one command inside the current batch's
  transaction; `commit()` ends the batch. One batch is one transaction and one sync of
  the WAL (group commit), never one per job. The storage clock is the owning node's
  World wall clock, passed in as `now`.
- `SqliteStorage` owns the core and ONE writer thread for the connection; a batch
  crosses into it once and its replies come back once (`execute`). Under the current
  actor shell (`actor.run_storage` with `commit=`), the commands run on the actor's
  thread inside the open transaction and only the COMMIT (the sync) crosses into the
  writer thread; replies wait for it. The thread is never used by two callers at once.
- Durability: `synchronous=FULL` (the default) syncs the WAL at every commit, so an
  answered write survives kill -9 and power loss. `synchronous=NORMAL` syncs only at
  checkpoints: it survives kill -9 but power loss may undo the last commits.
- A write SQLite cannot make (disk full, I/O error) fails its whole batch with
  `StorageUnavailable`; nothing of the batch is stored or answered as stored.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import IO, Any, TypeVar

import attrs
import outcome
import trio

from gotask._errors import GoTaskError, StorageUnavailable

from ._sqlite_core import SqliteStorageCore
from ._sqlite_schema import DEFAULT_PATH, SqliteSettings, open_database

__all__ = ["DEFAULT_PATH", "SqliteSettings", "SqliteStorage", "open_sqlite_storage"]

T = TypeVar("T")
_Work = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]


class WriterThread:
    """One thread that runs the functions handed to it, in order, one at a time."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, deliver = job
            deliver(outcome.capture(fn))

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn()` in the thread and return its result (or raise its exception).

        A cancelled caller still waits for `fn` to finish: the connection is never left
        in the middle of a batch.
        """
        token, task = trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((fn, deliver))
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    async def aclose(self) -> None:
        """Let the thread finish what it was given, then stop it."""
        self._jobs.put(None)
        await trio.to_thread.run_sync(self._thread.join)


@attrs.define(eq=False)
class SqliteStorage:
    """An open SQLite database, its core and its writer thread.

    Args:
        clock: the storage clock (seconds) for `execute(cmds, None)`; the owning node's
            World wall clock.
    """

    settings: SqliteSettings
    core: SqliteStorageCore
    writer: WriterThread
    lock: IO[str]
    clock: Callable[[], float] | None = None
    _committed: int = 0

    async def execute(self, cmds: list[Any], now: float | None = None) -> list[Any]:
        """Run a batch as one transaction in the writer thread (one crossing each way).

        Returns:
            Per command its reply, or the exception it raised (ValueError, TypeError,
            a GoTaskError). When the batch cannot be committed, every entry is the
            `StorageUnavailable` that says why.
        """
        if now is None:
            if self.clock is None:
                raise ValueError("SqliteStorage.execute needs `now` or a clock")
            now = self.clock()
        return await self.writer.run(functools.partial(self._run_batch, cmds, now))

    def _run_batch(self, cmds: list[Any], now: float) -> list[Any]:
        replies: list[Any] = []
        for cmd in cmds:
            try:
                replies.append(self.core.handle(cmd, now))
            except (ValueError, TypeError, GoTaskError) as exc:
                replies.append(exc)
        try:
            self.core.commit()
        except StorageUnavailable as exc:
            return [exc] * len(cmds)
        return replies

    async def commit(self) -> None:
        """End the batch the actor shell ran on its own thread: the COMMIT (and its sync)
        runs in the writer thread; a batch that changed nothing just ends, in place.

        Raises:
            StorageUnavailable: the batch failed or could not be committed.
        """
        changes = self.core.connection.total_changes
        if changes == self._committed:
            self.core.commit()
            return
        self._committed = changes
        await self.writer.run(self.core.commit)

    async def aclose(self) -> None:
        """Roll back an unfinished batch, close the database, release the lock."""
        try:
            await self.writer.run(self._close)
        finally:
            await self.writer.aclose()
            self.lock.close()

    def _close(self) -> None:
        self.core.rollback()
        self.core.connection.close()


async def open_sqlite_storage(
    url: str, clock: Callable[[], float] | None = None
) -> SqliteStorage:
    """Open (create, migrate) the database of `url` and lock it for this process.

    Args:
        url: `sqlite:///abs/path.db`, `sqlite://rel/path.db` or `sqlite://` (the
            default file), with `?synchronous=NORMAL` to trade power-loss safety of
            the last commits for speed.
        clock: the storage clock; see `SqliteStorage`.

    Raises:
        ConfigError: a malformed URL.
        StorageError: the file is in use by another process, foreign, newer or corrupt.
    """
    settings = SqliteSettings.from_url(url)
    writer = WriterThread(f"gotask-sqlite:{settings.path.name}")
    try:
        conn, lock = await writer.run(functools.partial(open_database, settings))
    except BaseException:
        await writer.aclose()
        raise
    core = SqliteStorageCore(conn)
    return SqliteStorage(settings, core, writer, lock, clock, conn.total_changes)
