"""The SQLite storage backend: the storage contract in one local file, durable by default.

Rules of the SQLite backend (this module and the `_sqlite_*` modules it is split into):
- One node process owns the file (`_sqlite_schema`: an exclusive lock, private modes,
  a versioned schema migrated at start; a foreign or corrupt file is refused). Other
  nodes `--join` the owner, as with memory storage.
- `SqliteStorageCore.handle(cmd, now)` applies one command inside the current
  transaction; `commit()` ends it. The storage clock is the owning node's World wall
  clock, read by the storage shell and passed in as `now`.
- `SqliteStorage` is the one storage shell's backend (`actor.run_storage`): it owns the
  core and ONE writer thread for the connection. A batch crosses into the thread once
  (`submit`), runs there whole (`_backend.run_commands`) and its results come back once,
  after its COMMIT: nothing is answered before it is durable. The thread alone touches
  the connection.
- Group commit: batches submitted while the thread works on earlier ones (the shell
  keeps up to `INFLIGHT_MAX` in flight) wait together and then run as ONE transaction,
  in submission order, with one COMMIT and one sync of the WAL. So the sync of one
  group overlaps the shell's work on the next batches, and groups grow with the load.
- Durability: `synchronous=FULL` (the default) syncs the WAL at every commit, so an
  answered write survives kill -9 and power loss. `synchronous=NORMAL` syncs only at
  checkpoints: it survives kill -9 but power loss may undo the last commits.
- A write SQLite cannot make (disk full, I/O error) fails its whole group with
  `StorageUnavailable`; nothing of it is stored or answered as stored.
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

from gotask._errors import StorageUnavailable

from ._backend import StorageEvents, run_commands
from ._sqlite_core import SqliteStorageCore
from ._sqlite_schema import DEFAULT_PATH, SqliteSettings, open_database

__all__ = ["DEFAULT_PATH", "SqliteSettings", "SqliteStorage", "open_sqlite_storage"]

T = TypeVar("T")
_Work = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]

#: Most batches the shell has in the writer thread at once (queued or running).
INFLIGHT_MAX = 8


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

    def put(self, fn: Callable[[], Any], deliver: Callable[[outcome.Outcome[Any]], None]) -> None:
        """Queue `fn`; the thread calls `deliver` with its outcome (in the thread)."""
        self._jobs.put((fn, deliver))

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn()` in the thread and return its result (or raise its exception).

        A cancelled caller still waits for `fn` to finish: the connection is never left
        in the middle of a batch.
        """
        token, task = trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self.put(fn, deliver)
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    async def aclose(self) -> None:
        """Let the thread finish what it was given, then stop it."""
        self._jobs.put(None)
        await trio.to_thread.run_sync(self._thread.join)


class Pending:
    """A batch submitted to the writer thread; its results arrive after its commit."""

    def __init__(self, cmds: list[Any], now: float) -> None:
        self.cmds, self.now = cmds, now
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._results: list[Any] = []

    def deliver(self, results: list[Any]) -> None:
        """Hand over the results (from the writer thread)."""
        try:
            self._token.run_sync_soon(self._set, results)
        except trio.RunFinishedError:
            pass  # the node stopped: nobody waits any more

    def _set(self, results: list[Any]) -> None:
        self._results = results
        self._done.set()

    async def wait(self) -> list[Any]:
        """One result per command: its reply, or the exception it failed with."""
        if not self._done.is_set():  # else no checkpoint: it costs a scheduling round
            await self._done.wait()
        return self._results


@attrs.define(eq=False)
class SqliteStorage:
    """An open SQLite database, its core and its writer thread: a `StorageBackend`
    (see `_backend`) whose batches run whole in the thread, committed in groups."""

    settings: SqliteSettings
    core: SqliteStorageCore
    writer: WriterThread
    lock: IO[str]
    _waiting: list[Pending] = attrs.field(factory=list)  # submitted, not yet in the thread
    _guard: threading.Lock = attrs.field(factory=threading.Lock)

    shared = False
    own_clock = False
    inflight_max = INFLIGHT_MAX

    def submit(self, cmds: list[Any], now: float | None) -> Pending:
        """Queue `cmds` for the writer thread at storage time `now`; they run after every
        batch submitted before, in the same transaction as those still waiting."""
        assert now is not None
        pending = Pending(cmds, now)
        with self._guard:
            self._waiting.append(pending)
            first = len(self._waiting) == 1
        if first:
            self.writer.put(self._run_group, _raise)
        return pending

    def _run_group(self) -> None:  # in the writer thread
        with self._guard:
            group, self._waiting = self._waiting, []
        try:
            results = [run_commands(self.core, p.cmds, p.now) for p in group]
            self.core.commit()
        except StorageUnavailable as exc:
            results = [[exc] * len(p.cmds) for p in group]
        except Exception as exc:  # a bug: answered with it, the shell crashes the actor
            self.core.rollback()
            results = [[exc] * len(p.cmds) for p in group]
        for pending, replies in zip(group, results, strict=True):
            pending.deliver(replies)

    async def next_events(self) -> StorageEvents:
        """Never called: only this node's storage actor changes the file."""
        raise NotImplementedError("SQLite storage has no events")

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


def _raise(result: outcome.Outcome[Any]) -> None:
    # `_run_group` answers every error it meets; what is left (a BaseException) ends the
    # thread loudly.
    result.unwrap()


async def open_sqlite_storage(url: str) -> SqliteStorage:
    """Open (create, migrate) the database of `url` and lock it for this process.

    Args:
        url: `sqlite:///abs/path.db`, `sqlite://rel/path.db` or `sqlite://` (the
            default file), with `?synchronous=NORMAL` to trade power-loss safety of
            the last commits for speed.

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
    return SqliteStorage(settings, core, writer, lock)
