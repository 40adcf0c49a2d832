"""The SQLite core's interface and hot path: enqueue, lease, and the running attempt.

Rules of this module: those of `sqlite` (the SQLite backend), whose `SqliteStorageCore`
is defined here over `_SqliteMaintenance`.
- `handle(cmd, now)` runs one command inside the batch's transaction (opened by the
  first command, `BEGIN IMMEDIATE`), under a savepoint: a command that fails with a
  ValueError, TypeError or GoTaskError is undone alone and its error raised.
- An SQLite error (disk full, I/O error) fails the whole batch: the transaction is rolled
  back, the command raises `StorageUnavailable`, and so does `commit()`, so that no
  reply of the batch is sent as if it were stored.
- `commit()` ends the batch: one COMMIT, one sync of the WAL (group commit).
- Fencing is done in SQL: a current token is `state = 'active' AND attempt = ?`;
  anything else is judged from the job's `settled_attempt` (duplicate) or stale.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NoReturn, TypeVar, cast

from gotask._errors import IllegalTransition, StorageFull, StorageUnavailable
from gotask._job import AttemptOutcome, JobRecord, attempt_error

from . import base as b
from ._core_dispatch import dispatch
from ._fairness import FairCredits, swrr
from ._history import history_from_json
from ._sqlite_cron import _SqliteCron
from ._sqlite_maintenance import (
    _COLS,
    CANCEL,
    DUPLICATE,
    ENDED,
    MISSING,
    OK,
    STALE,
    _SqliteMaintenance,
)
from .base import Command, StorageCommand

__all__ = ["SqliteStorageCore"]

R = TypeVar("R")

_INSERT = (
    "INSERT INTO jobs (id, task, queue, args, priority, state, created_at, due_at, "
    "max_attempts, result_ttl_s, timeout_s, idempotency_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_READY = (
    f"SELECT seq, {_COLS} FROM jobs WHERE state = 'queued' AND queue = ? "
    "ORDER BY priority DESC, due_at, seq LIMIT ?"
)
_LEASE = ("UPDATE jobs SET state = 'active', attempt = attempt + 1, leased_at = ?, "
          "lease_expires_at = ?, lease_node = ? WHERE seq = ?")
_BEAT = ("UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND state = 'active' "
         "AND attempt = ? RETURNING cancel_requested")
_BEAT_STARTED = ("UPDATE jobs SET lease_expires_at = ?, started_attempt = attempt "
                 "WHERE id = ? AND state = 'active' AND attempt = ? RETURNING cancel_requested")
_ACK = (
    "UPDATE jobs SET state = 'succeeded', settled_attempt = attempt, result = ?, "
    "error_type = NULL, error = NULL, traceback = NULL, progress = 1.0, finished_at = ?, "
    f"lease_expires_at = NULL, expires_at = ? + result_ttl_s, {ENDED} "
    "WHERE id = ? AND state = 'active' AND attempt = ?"
)
_SUCCEEDED, _FAILED = AttemptOutcome.SUCCEEDED.value, AttemptOutcome.FAILED.value
_CANCELLED, _RELEASED = AttemptOutcome.CANCELLED.value, AttemptOutcome.RELEASED.value
_FENCE = ("SELECT state, attempt, settled_attempt, releases, attempt_base, max_attempts, "
          "cancel_requested FROM jobs WHERE id = ?")
_PROGRESS = ("UPDATE jobs SET progress = ?, progress_message = ? "
             "WHERE id = ? AND state = 'active' AND attempt = ?")
_NEXT_DUE = "SELECT min(due_at) FROM jobs WHERE state = 'scheduled'"
_ILLEGAL = "illegal job state transition"


def _leased(row: Any, now: float, expires_at: float, node: str) -> JobRecord:
    """The record of a ready row (`seq` first) once leased."""
    return JobRecord(
        row[1], row[2], row[3], row[4], row[5], "active", row[7], row[8], row[9], row[10],
        row[11] + 1, row[12], row[13], row[14], now, row[16], expires_at, node, row[19],
        row[20], row[21], row[22], row[23], row[24], row[25], row[26], bool(row[27]), row[28],
        row[29], row[30], history_from_json(row[31]), row[32],
    )  # fmt: skip


class SqliteStorageCore(_SqliteMaintenance, _SqliteCron):
    """The storage contract over one SQLite connection (see `sqlite` for the rules).

    Args:
        conn: an open connection in autocommit mode (`_sqlite_schema.open_database`),
            used by one thread at a time.
        jobs_max: most jobs held at once (finished ones count until purged).
        nodes_max: most registered nodes, and most nodes whose fairness state is kept.
    """

    def __init__(self, conn: sqlite3.Connection, jobs_max: int = 100_000_000,
                 nodes_max: int = 10_000) -> None:
        super().__init__(conn, nodes_max)
        self.jobs_max = jobs_max
        self._fair = FairCredits(nodes_max)
        self._failure: str | None = None

    def handle(self, cmd: Command[R], now: float) -> R:
        """Apply one command at storage time `now` (seconds) inside the batch's transaction.

        Raises:
            TypeError: `cmd` is not a storage command.
            StorageFull: enqueue past `jobs_max`, or registering past `nodes_max`.
            StorageUnavailable: SQLite failed (disk full, I/O error): the batch is lost.
        """
        if self._failure is not None:
            raise StorageUnavailable(self._failure)
        conn = self._conn
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT cmd")
        except sqlite3.Error as exc:
            self._fail_batch(exc)
        try:
            reply = dispatch(self, cast(StorageCommand, cmd), now)
        except sqlite3.IntegrityError as exc:
            if _ILLEGAL not in str(exc):
                self._fail_batch(exc)
            self._undo()
            raise IllegalTransition(f"{type(cmd).__name__}: {_ILLEGAL}") from None
        except sqlite3.Error as exc:
            self._fail_batch(exc)
        except BaseException:
            self._undo()
            raise
        conn.execute("RELEASE cmd")
        return cast(R, reply)

    def commit(self) -> None:
        """Make the batch durable (one COMMIT) and start afresh.

        Raises:
            StorageUnavailable: the batch failed or could not be committed; none of its
                changes are stored.
        """
        failure, self._failure = self._failure, None
        if failure is not None:
            raise StorageUnavailable(failure)
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageUnavailable(_describe(exc)) from None

    def next_due(self) -> float | None:
        """The earliest due time of the scheduled jobs (None: none), in the batch.

        Raises:
            StorageUnavailable: SQLite failed: the batch is lost.
        """
        try:
            row = self._conn.execute(_NEXT_DUE).fetchone()
        except sqlite3.Error as exc:
            self._fail_batch(exc)
        return None if row[0] is None else float(row[0])

    def rollback(self) -> None:
        """Drop the batch's changes (nothing of it was answered)."""
        self._failure = None
        self._rollback()

    def _undo(self) -> None:
        self._conn.execute("ROLLBACK TO cmd")
        self._conn.execute("RELEASE cmd")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back by itself (e.g. after SQLITE_FULL)

    def _fail_batch(self, exc: sqlite3.Error) -> NoReturn:
        self._failure = _describe(exc)
        self._rollback()
        raise StorageUnavailable(self._failure) from None

    def _list_dead(self, queue: str | None, limit: int,
                   after_id: str | None) -> tuple[tuple[JobRecord, ...], str | None]:
        return self._list(queue, "dead", limit, after_id)

    # -- enqueue and lease -------------------------------------------------------------

    def _enqueue(self, cmd: b.EnqueueJobs, now: float) -> b.EnqueueReply:
        held = self._conn.execute("SELECT coalesce(sum(n), 0) FROM counts").fetchone()[0]
        if held + len(cmd.jobs) > self.jobs_max:
            raise StorageFull(f"SQLite storage holds {held} jobs; {len(cmd.jobs)} more "
                              f"would pass jobs_max={self.jobs_max}")
        rows = [(j.id, j.task, j.queue, j.args, j.priority,
                 "scheduled" if j.delay_s > 0 else "queued", now, now + j.delay_s,
                 j.max_attempts, j.result_ttl_s, j.timeout_s, j.idempotency_key)
                for j in cmd.jobs]  # fmt: skip
        conn = self._conn
        conn.execute("SAVEPOINT enqueue")
        if conn.executemany(_INSERT, rows).rowcount == len(rows):
            conn.execute("RELEASE enqueue")
            return b.EnqueueReply(tuple(j.id for j in cmd.jobs), (True,) * len(rows))
        # Some are repeats: redo them one by one to tell which.
        conn.execute("ROLLBACK TO enqueue")
        conn.execute("RELEASE enqueue")
        ids: list[str] = []
        created: list[bool] = []
        for new, row in zip(cmd.jobs, rows, strict=True):
            known = self._known(new.idempotency_key, new.id)
            if known is None:
                conn.execute(_INSERT, row)
            ids.append(known if known is not None else new.id)
            created.append(known is None)
        return b.EnqueueReply(tuple(ids), tuple(created))

    def _known(self, key: str | None, job_id: str) -> str | None:
        """The id of the job holding `key`, else `job_id` if it exists, else None."""
        if key is not None:
            row = self._conn.execute(
                "SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
        found = self._conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_id if found is not None else None

    def _lease(self, cmd: b.LeaseJobs, now: float) -> b.LeaseReply:
        self._promote(now, None)
        conn, limit = self._conn, cmd.limit
        paused = self._paused_set()
        ready = {q.name: [] if q.name in paused else conn.execute(_READY, (q.name, limit))
                 .fetchall() for q in cmd.queues}
        single = len(cmd.queues) == 1
        picked = ready[cmd.queues[0].name] if single else self._fair_pick(cmd, ready)
        expires_at, node = now + cmd.lease_timeout_s, cmd.node
        conn.executemany(_LEASE, [(now, expires_at, node, row[0]) for row in picked])
        return b.LeaseReply(tuple(_leased(row, now, expires_at, node) for row in picked))

    def _fair_pick(self, cmd: b.LeaseJobs, ready: dict[str, list[Any]]) -> list[Any]:
        """Pick from several queues by smooth weighted round robin, one job at a time."""
        live = [q for q in cmd.queues if ready[q.name]]
        credit = self._fair.of(cmd.node)
        bound = sum(q.weight for q in cmd.queues)
        taken = dict.fromkeys(ready, 0)
        picked: list[Any] = []
        while live and len(picked) < cmd.limit:
            queue = swrr(live, credit, bound) if len(live) > 1 else live[0]
            rows, i = ready[queue.name], taken[queue.name]
            picked.append(rows[i])
            taken[queue.name] = i + 1
            if i + 1 == len(rows):
                live.remove(queue)
        return picked

    def _forget_node(self, node: str) -> None:
        self._fair.forget(node)

    # -- the running attempt ---------------------------------------------------------

    def _heartbeat(self, cmd: b.Heartbeat, now: float) -> b.HeartbeatReply:
        expires_at = now + cmd.lease_timeout_s
        execute, sql = self._conn.execute, _BEAT_STARTED if cmd.started else _BEAT
        statuses: list[str] = []
        for token in cmd.tokens:
            row = execute(sql, (expires_at, token.job_id, token.attempt)).fetchone()
            statuses.append(STALE if row is None else CANCEL if row[0] else OK)
        return b.HeartbeatReply(tuple(statuses), expires_at)

    def _ack(self, cmd: b.AckJobs, now: float) -> b.AckReply:
        execute = self._conn.execute
        statuses: list[str] = []
        for item in cmd.items:
            args = (item.result, now, now, now, _SUCCEEDED, None, item.job_id, item.attempt)
            if execute(_ACK, args).rowcount == 1:
                statuses.append(OK)
            else:
                statuses.append(self._judge(item.job_id, item.attempt)[0])
        return b.AckReply(tuple(statuses))

    def _judge(self, job_id: str, attempt: int) -> tuple[str, Any]:
        """Judge a lease token: its status and the job's fencing row (None: missing)."""
        row = self._conn.execute(_FENCE, (job_id,)).fetchone()
        if row is None:
            return STALE, None
        if row[0] == "active" and row[1] == attempt:
            return OK, row
        if attempt and row[2] == attempt:
            return DUPLICATE, row
        return STALE, row

    def _nack(self, cmd: b.NackJobs, now: float) -> b.NackReply:
        statuses: list[str] = []
        states: list[str] = []
        for item in cmd.items:
            status, row = self._judge(item.job_id, item.attempt)
            state = MISSING if row is None else row[0]
            if status == OK:
                state = self._fail(item, row, now)
            statuses.append(status)
            states.append(state)
        return b.NackReply(tuple(statuses), tuple(states))

    def _fail(self, item: b.NackItem, row: Any, now: float) -> str:
        """Record a failed attempt and move the job on; returns its new state."""
        _, attempt, _, releases, base, max_attempts, cancel_requested = row
        cancel = item.outcome == b.Outcome.CANCELLED or (
            item.outcome == b.Outcome.RETRY and cancel_requested)
        self._conn.execute(
            "UPDATE jobs SET settled_attempt = ?, error_type = ?, error = ?, traceback = ?, "
            f"lease_expires_at = NULL, {ENDED} WHERE id = ?",
            (item.attempt, item.error_type, item.error, item.traceback, now,
             _CANCELLED if cancel else _FAILED, attempt_error(item.error_type, item.error),
             item.job_id))
        if cancel:
            return self._finish(item.job_id, "cancelled", now)
        if item.outcome == b.Outcome.DEAD or attempt - releases - base >= max_attempts:
            return self._finish(item.job_id, "dead", now)
        self._conn.execute("UPDATE jobs SET state = 'scheduled', due_at = ? WHERE id = ?",
                           (now + (item.retry_in_s or 0.0), item.job_id))
        return "scheduled"

    def _release(self, cmd: b.ReleaseJobs, now: float) -> b.ReleaseReply:
        statuses: list[str] = []
        states: list[str] = []
        for token in cmd.tokens:
            status, row = self._judge(token.job_id, token.attempt)
            state = MISSING if row is None else row[0]
            if status == OK:
                self._conn.execute(f"UPDATE jobs SET releases = releases + 1, {ENDED} "
                                   "WHERE id = ?", (now, _RELEASED, None, token.job_id))
                state = self._hand_back(token.job_id, bool(row[6]), now)
            statuses.append(status)
            states.append(state)
        return b.ReleaseReply(tuple(statuses), tuple(states))

    def _progress(self, cmd: b.ReportProgress) -> b.ProgressReply:
        execute = self._conn.execute
        return b.ProgressReply(tuple(
            execute(_PROGRESS, (i.fraction, i.message, i.job_id, i.attempt)).rowcount == 1
            for i in cmd.items
        ))


def _describe(exc: sqlite3.Error) -> str:
    return f"SQLite storage cannot write: {exc}"
