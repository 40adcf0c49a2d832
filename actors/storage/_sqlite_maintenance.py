"""The SQLite core's moves, control and maintenance, reads and node registry.

Rules of this module: those of `sqlite` (the SQLite backend). Every statement runs in
the caller's transaction; nothing here commits. A job's state changes only through
these statements and `_sqlite_core`'s, and the schema's trigger checks each change
against `TRANSITIONS`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgpack

from gotask._errors import StorageFull
from gotask._job import HISTORY_MAX, JobRecord, attempt_error, expiry

from . import base as b
from ._history import history_from_json
from ._sqlite_schema import JOB_COLUMNS
from .base import Status

__all__ = [
    "CANCEL",
    "DUPLICATE",
    "ENDED",
    "MISSING",
    "OK",
    "STALE",
    "_COLS",
    "_SqliteMaintenance",
    "record",
]

OK: str = Status.OK.value
STALE: str = Status.STALE.value
DUPLICATE: str = Status.DUPLICATE.value
CANCEL: str = Status.CANCEL.value
MISSING: str = Status.MISSING.value
_COLS = JOB_COLUMNS

_GET = f"SELECT {_COLS} FROM jobs WHERE id = ?"
_FINISH = ("UPDATE jobs SET state = ?, finished_at = ?, lease_expires_at = NULL, "
           "expires_at = CASE WHEN ? = 'dead' THEN NULL ELSE ? + result_ttl_s END WHERE id = ?")
_PROMOTE = ("UPDATE jobs SET state = 'queued' WHERE seq IN (SELECT seq FROM jobs "
            "WHERE state = 'scheduled' AND due_at <= ? ORDER BY due_at, seq LIMIT ?)")
_EXPIRED = ("SELECT id, attempt, releases, attempt_base, max_attempts, cancel_requested, "
            "lease_node, started_attempt, unstarted_expiries FROM jobs "
            "WHERE state = 'active' AND lease_expires_at <= ? "
            "ORDER BY lease_expires_at, id LIMIT ?")
_PURGE = ("DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE expires_at <= ? "
          "AND state IN ('succeeded', 'cancelled') ORDER BY expires_at LIMIT ?)")
_REVIVE = ("UPDATE jobs SET state = 'queued', attempt_base = attempt - releases, due_at = ?, "
           "finished_at = NULL, expires_at = NULL, cancel_requested = 0 "
           "WHERE state = 'dead'")


#: SET clauses that end the current attempt: its `_history` entry appended (the oldest
#: dropped past `HISTORY_MAX`). Parameters: the end time, the outcome and the error.
ENDED = (
    f"history = json_insert(CASE WHEN json_array_length(history) >= {HISTORY_MAX} "
    "THEN json_remove(history, '$[0]') ELSE history END, '$[#]', "
    "json_array(attempt, lease_node, leased_at, ?, ?, ?)), "
    f"history_dropped = history_dropped + (json_array_length(history) >= {HISTORY_MAX})"
)


def record(row: Any) -> JobRecord:
    """A `JobRecord` from a row of `JOB_COLUMNS`."""
    fields = (*row[:26], bool(row[26]), *row[27:30], history_from_json(row[30]), row[31])
    return JobRecord(*fields)


class _SqliteMaintenance:
    """Moves shared by the commands; cancel, expiry, purges, the DLQ; reads; nodes."""

    def __init__(self, conn: sqlite3.Connection, nodes_max: int) -> None:
        self._conn = conn
        self.nodes_max = nodes_max

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection the core runs its statements on."""
        return self._conn

    def _forget_node(self, node: str) -> None:
        """Drop what the core keeps in memory about `node` (its fairness credits)."""

    # -- moves -------------------------------------------------------------------------

    def _finish(self, job_id: str, state: str, now: float) -> str:
        """Move to a terminal state: dead jobs wait in the DLQ, others expire."""
        self._conn.execute(_FINISH, (state, now, state, now, job_id))
        return state

    def _hand_back(self, job_id: str, cancel_requested: bool, now: float) -> str:
        """A release or an expired lease: queued in its old place (its priority, due time
        and seq are unchanged), or cancelled when cancellation was requested."""
        if cancel_requested:
            return self._finish(job_id, "cancelled", now)
        self._conn.execute(
            "UPDATE jobs SET state = 'queued', lease_expires_at = NULL WHERE id = ?", (job_id,))
        return "queued"

    def _promote(self, now: float, limit: int | None) -> int:
        """Queue up to `limit` (None: all) due scheduled jobs, earliest due first."""
        return self._conn.execute(_PROMOTE, (now, -1 if limit is None else limit)).rowcount

    # -- control and maintenance -----------------------------------------------------

    def _cancel(self, job_id: str, now: float) -> str:
        row = self._conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return MISSING
        state: str = row[0]
        if state in ("queued", "scheduled"):
            return self._finish(job_id, "cancelled", now)
        if state == "active":
            self._conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return state

    def _requeue_expired(self, limit: int, now: float) -> b.RequeueExpiredReply:
        moved: dict[str, list[str]] = {"queued": [], "dead": [], "cancelled": []}
        for job_id, attempt, releases, base, max_attempts, cancel, node, started, free in \
                self._conn.execute(_EXPIRED, (now, limit)).fetchall():
            outcome, error_type, error = expiry(attempt, node, started, free)
            if error_type is None:
                releases += 1
                self._conn.execute(
                    "UPDATE jobs SET releases = releases + 1, "
                    f"unstarted_expiries = unstarted_expiries + 1, {ENDED} WHERE id = ?",
                    (now, outcome, None, job_id))
            else:
                self._conn.execute(
                    f"UPDATE jobs SET error_type = ?, error = ?, traceback = NULL, {ENDED} "
                    "WHERE id = ?", (error_type, error, now, outcome,
                                     attempt_error(error_type, error), job_id))
            if attempt - releases - base >= max_attempts and not cancel:
                state = self._finish(job_id, "dead", now)
            else:
                state = self._hand_back(job_id, bool(cancel), now)
            moved[state].append(job_id)
        return b.RequeueExpiredReply(
            tuple(moved["queued"]), tuple(moved["dead"]), tuple(moved["cancelled"]))

    def _purge_expired(self, limit: int, now: float) -> int:
        return self._conn.execute(_PURGE, (now, limit)).rowcount

    def _retry_dead(self, ids: tuple[str, ...] | None, now: float) -> int:
        if ids is None:
            return self._conn.execute(_REVIVE, (now,)).rowcount
        execute = self._conn.execute
        return sum(execute(_REVIVE + " AND id = ?", (now, job_id)).rowcount for job_id in ids)

    def _purge_dead(self, ids: tuple[str, ...] | None) -> int:
        if ids is None:
            return self._conn.execute("DELETE FROM jobs WHERE state = 'dead'").rowcount
        execute = self._conn.execute
        return sum(execute("DELETE FROM jobs WHERE state = 'dead' AND id = ?",
                           (job_id,)).rowcount for job_id in ids)

    # -- reads -----------------------------------------------------------------------

    def _get(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute(_GET, (job_id,)).fetchone()
        return record(row) if row is not None else None

    def _counts(self) -> tuple[b.QueueCount, ...]:
        rows = self._conn.execute(
            "SELECT queue, state, n FROM counts WHERE n > 0 ORDER BY queue, state")
        return tuple(b.QueueCount(queue, state, n) for queue, state, n in rows)

    def _set_paused(self, queue: str, paused: bool) -> None:
        sql = ("INSERT INTO paused_queues (queue) VALUES (?) ON CONFLICT DO NOTHING" if paused
               else "DELETE FROM paused_queues WHERE queue = ?")
        self._conn.execute(sql, (queue,))

    def _paused(self) -> tuple[str, ...]:
        return tuple(sorted(self._paused_set()))

    def _ready_since(self) -> tuple[b.QueueReadySince, ...]:
        rows = self._conn.execute(
            "SELECT c.queue, (SELECT min(due_at) FROM jobs WHERE state = 'queued' "
            "AND queue = c.queue) FROM counts c WHERE c.state = 'queued' AND c.n > 0 "
            "ORDER BY c.queue")
        return tuple(b.QueueReadySince(q, since) for q, since in rows if since is not None)

    def _paused_set(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT queue FROM paused_queues")}

    def _list(
        self, queue: str | None, state: str | None, limit: int, after_id: str | None,
        task: str | None = None,
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        """One page of jobs ordered by id after `after_id`, filtered; and the next cursor."""
        where, args = ["id > ?"], [after_id if after_id is not None else ""]
        for column, value in (("queue", queue), ("task", task)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if state == "dead":
            where.append("state = 'dead'")  # a literal: the DLQ's partial index applies
        elif state is not None:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {_COLS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        page = tuple(record(row) for row in self._conn.execute(sql, (*args, limit)))
        return page, page[-1].id if len(page) == limit else None

    # -- nodes ---------------------------------------------------------------------------

    def _register(self, cmd: b.RegisterNode, now: float) -> float:
        expires_at = now + cmd.ttl_s
        conn = self._conn
        info = msgpack.packb(cmd.info)
        known = conn.execute("SELECT 1 FROM nodes WHERE node = ?", (cmd.node,)).fetchone()
        if known is None:
            held = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
            if held >= self.nodes_max:
                raise StorageFull(f"{held} nodes registered; nodes_max={self.nodes_max}")
            conn.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?)",
                         (cmd.node, info, now, now, expires_at))
        else:
            conn.execute("UPDATE nodes SET info = ?, last_seen = ?, expires_at = ? "
                         "WHERE node = ?", (info, now, expires_at, cmd.node))
        return expires_at

    def _live_nodes(self, now: float) -> tuple[b.NodeInfo, ...]:
        rows = self._conn.execute(
            "SELECT node, info, first_seen, last_seen, expires_at FROM nodes "
            "WHERE expires_at > ? ORDER BY node", (now,))
        return tuple(b.NodeInfo(node, _info(info), first, last, expires)
                     for node, info, first, last, expires in rows)

    def _expire_nodes(self, now: float) -> tuple[str, ...]:
        removed = tuple(row[0] for row in self._conn.execute(
            "SELECT node FROM nodes WHERE expires_at <= ? ORDER BY node", (now,)))
        self._conn.execute("DELETE FROM nodes WHERE expires_at <= ?", (now,))
        for node in removed:
            self._forget_node(node)
        return removed


def _info(packed: bytes) -> dict[str, Any]:
    info: dict[str, Any] = msgpack.unpackb(packed, raw=False, use_list=False,
                                           strict_map_key=False)
    return info
