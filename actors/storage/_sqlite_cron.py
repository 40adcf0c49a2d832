"""The SQLite core's cron block (issue 15): the `cron_entries` table and its fire CAS.

Rules of this module: those of `sqlite` and of the contract's cron block (`_base_cron`).
The compare-and-set is one `UPDATE ... WHERE last_tick = expected` in the command's
savepoint, with the enqueue of its jobs: both or neither are stored.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from typing import Any

from . import base as b

__all__ = ["_SqliteCron"]

_STATE = "SELECT name, definition, node, registered_at, last_tick, paused, last_job "
_REGISTER = (
    "INSERT INTO cron_entries (name, definition, node, registered_at, last_tick) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, "
    "node = excluded.node, registered_at = excluded.registered_at"
)
_ADVANCE = "UPDATE cron_entries SET last_tick = ? WHERE name = ? AND last_tick = ? RETURNING paused"


def _state(row: Any) -> b.CronState:
    return b.CronState(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])


class _SqliteCron:
    """Register, fire (compare-and-set), list and pause cron entries."""

    _conn: sqlite3.Connection
    #: Enqueue as `EnqueueJobs` does (`SqliteStorageCore` provides it).
    _enqueue: Callable[[b.EnqueueJobs, float], b.EnqueueReply]

    def _cron_get(self, name: str) -> b.CronState | None:
        row = self._conn.execute(_STATE + "FROM cron_entries WHERE name = ?", (name,)).fetchone()
        return _state(row) if row is not None else None

    def _cron_register(self, cmd: b.CronRegister, now: float) -> b.CronRegisterReply:
        changed: list[str] = []
        states: list[b.CronState] = []
        for entry in cmd.entries:
            old = self._cron_get(entry.name)
            if old is not None and old.definition != entry.definition:
                changed.append(entry.name)
            self._conn.execute(_REGISTER, (entry.name, entry.definition, cmd.node, now,
                                           math.floor(now)))
            state = self._cron_get(entry.name)
            assert state is not None
            states.append(state)
        given = {entry.name for entry in cmd.entries}
        names = [row[0] for row in self._conn.execute("SELECT name FROM cron_entries")]
        unknown = tuple(sorted(name for name in names if name not in given))
        return b.CronRegisterReply(tuple(states), tuple(changed), unknown)

    def _cron_fire(self, cmd: b.CronFire, now: float) -> b.CronFireReply:
        row = None
        if cmd.tick <= now:
            row = self._conn.execute(_ADVANCE, (cmd.tick, cmd.name, cmd.expected)).fetchone()
        if row is None:
            state = self._cron_get(cmd.name)
            if state is None:
                return b.CronFireReply(b.CRON_MISSING, None, (), now)
            outcome = b.CRON_EARLY if cmd.tick > now else b.CRON_STALE
            return b.CronFireReply(outcome, state.last_tick, (), now)
        if row[0]:
            return b.CronFireReply(b.CRON_PAUSED, cmd.tick, (), now)
        ids = self._enqueue(b.EnqueueJobs(cmd.jobs), now).ids if cmd.jobs else ()
        if ids:
            self._conn.execute("UPDATE cron_entries SET last_job = ? WHERE name = ?",
                               (ids[-1], cmd.name))
        return b.CronFireReply(b.CRON_FIRED, cmd.tick, ids, now)

    def _cron_list(self) -> b.CronListReply:
        rows = self._conn.execute(_STATE + "FROM cron_entries ORDER BY name")
        return b.CronListReply(tuple(_state(row) for row in rows))

    def _cron_pause(self, cmd: b.CronSetPaused) -> b.CronSetPausedReply:
        cursor = self._conn.execute("UPDATE cron_entries SET paused = ? WHERE name = ?",
                                    (int(cmd.paused), cmd.name))
        return b.CronSetPausedReply(cursor.rowcount > 0)
