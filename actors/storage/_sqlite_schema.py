"""The SQLite backend's file: its URL, schema, migrations, pragmas and lock.

Rules of this module: those of `sqlite` (the SQLite backend). Opening a database:
- The URL is `sqlite:///abs/path.db`, `sqlite://rel/path.db` or `sqlite://` (the default
  file, `DEFAULT_PATH`); `?synchronous=FULL` (the default) or `NORMAL`.
- The directory is created 0700 and the file 0600 (the WAL and shared-memory files take
  the file's mode); an existing file's mode is left as the operator set it.
- One process owns a file: an exclusive `flock` on `<file>.lock` (holding the owner's
  pid) is taken before SQLite opens it, and kept until the storage closes. A second
  process is refused with `StorageError`; other nodes `--join` the owner.
- A file is GoTask's when its `application_id` is `APPLICATION_ID`; its schema version
  is `PRAGMA user_version`. An empty file gets the schema; an older version is migrated
  in one transaction (`MIGRATIONS`); a foreign, newer, or corrupt file is refused with a
  one-line `StorageError`.
- Counts per (queue, state) are kept by triggers, so `CountJobs` never scans; another
  trigger refuses a state change not in `TRANSITIONS`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import IO

import attrs

from gotask._errors import ConfigError, StorageError
from gotask._job import TRANSITIONS

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_PATH",
    "JOB_COLUMNS",
    "SCHEMA_VERSION",
    "SqliteSettings",
    "open_database",
]

#: `PRAGMA application_id` of a GoTask database: "GTsq".
APPLICATION_ID = 0x47547371
SCHEMA_VERSION = 6
#: Where `sqlite://` (no path) keeps its file, relative to the working directory.
DEFAULT_PATH = ".gotask/gotask.db"
_SYNC_MODES = ("FULL", "NORMAL")

#: The job columns in `JobRecord`'s field order (a row maps to it positionally).
JOB_COLUMNS = (
    "id, task, queue, args, priority, state, created_at, due_at, max_attempts, result_ttl_s, "
    "attempt, releases, attempt_base, settled_attempt, leased_at, finished_at, "
    "lease_expires_at, lease_node, timeout_s, result, error_type, error, traceback, progress, "
    "progress_message, idempotency_key, cancel_requested, expires_at, started_attempt, "
    "unstarted_expiries, history, history_dropped"
)

_EDGES = ", ".join(f"'{old.value}>{new.value}'" for old, news in TRANSITIONS.items()
                   for new in sorted(news))

_SCHEMA_V1 = f"""
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    max_attempts INTEGER NOT NULL,
    result_ttl_s REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    releases INTEGER NOT NULL DEFAULT 0,
    attempt_base INTEGER NOT NULL DEFAULT 0,
    settled_attempt INTEGER NOT NULL DEFAULT 0,
    leased_at REAL,
    finished_at REAL,
    lease_expires_at REAL,
    lease_node TEXT,
    timeout_s REAL,
    result BLOB,
    error_type TEXT,
    error TEXT,
    traceback TEXT,
    progress REAL NOT NULL DEFAULT 0.0,
    progress_message TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, due_at, seq) WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (due_at, seq) WHERE state = 'scheduled';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'active';
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX jobs_dead ON jobs (id) WHERE state = 'dead';
CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO counts VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;
CREATE TRIGGER jobs_count_move AFTER UPDATE OF state ON jobs
WHEN old.state != new.state BEGIN
    UPDATE counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
    INSERT INTO counts VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_transition BEFORE UPDATE OF state ON jobs
WHEN old.state != new.state AND old.state || '>' || new.state NOT IN ({_EDGES}) BEGIN
    SELECT RAISE(ABORT, 'illegal job state transition');
END;
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

# -- cron (issue 15) --
_SCHEMA_V2_CRON = """
CREATE TABLE cron_entries (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    node TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_tick INTEGER NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    last_job TEXT
) WITHOUT ROWID;
"""

# -- paused queues (issue 16) --
_SCHEMA_V3_PAUSED = """
CREATE TABLE paused_queues (
    queue TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

# -- listing jobs by task (issue 16) --
_SCHEMA_V4_TASK = """
CREATE INDEX jobs_task ON jobs (task, id);
"""

# -- the oldest ready job per queue (issue 16) --
_SCHEMA_V5_READY_DUE = """
CREATE INDEX jobs_ready_due ON jobs (queue, due_at) WHERE state = 'queued';
"""

# -- attempt history (issues 21 and 22): the JSON array of `_history` --
_SCHEMA_V6_ATTEMPTS = """
ALTER TABLE jobs ADD COLUMN started_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN unstarted_expiries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN history_dropped INTEGER NOT NULL DEFAULT 0;
"""

#: Scripts that bring a database from version `i` to `i + 1`; index 0 creates it.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2_CRON, _SCHEMA_V3_PAUSED,
                               _SCHEMA_V4_TASK, _SCHEMA_V5_READY_DUE, _SCHEMA_V6_ATTEMPTS)
assert len(MIGRATIONS) == SCHEMA_VERSION


@attrs.frozen
class SqliteSettings:
    """Where the database is and how hard each commit syncs."""

    path: Path
    synchronous: str = "FULL"

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Parse `sqlite://[PATH][?synchronous=FULL|NORMAL]`.

        Raises:
            ConfigError: not a sqlite:// URL, or an unknown option or value.
        """
        if not url.startswith("sqlite://"):
            raise ConfigError(f"not a SQLite URL (sqlite:///path/to/gotask.db): {url!r}")
        rest, _, query = url[len("sqlite://"):].partition("?")
        synchronous = "FULL"
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            if name != "synchronous" or value.upper() not in _SYNC_MODES:
                raise ConfigError(f"SQLite URL option must be synchronous=FULL or "
                                  f"synchronous=NORMAL, got {pair!r}")
            synchronous = value.upper()
        return cls(Path(rest or DEFAULT_PATH), synchronous)


def open_database(settings: SqliteSettings) -> tuple[sqlite3.Connection, IO[str]]:
    """Lock, open, check and migrate the database; returns the connection and the lock.

    The connection is in autocommit mode (`isolation_level=None`): the caller opens and
    commits transactions itself. Close the lock file after the connection.

    Raises:
        StorageError: the file is locked by another process, foreign, newer or corrupt,
            or cannot be created.
    """
    path = settings.path
    try:
        _make_private(path)
        lock = _lock(path)
    except OSError as exc:
        raise StorageError(f"cannot open SQLite storage {path}: {exc.strerror or exc}") from None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               cached_statements=256)
        try:
            _check_and_migrate(conn, path)
            _configure(conn, settings.synchronous)
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        lock.close()
        text = " ".join(str(exc).split())
        raise StorageError(f"{path} is not a usable GoTask database: {text}") from None
    except BaseException:
        lock.close()
        raise
    return conn, lock


def _make_private(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        path.parent.chmod(0o700)  # mkdir's mode is masked by the umask
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _lock(path: Path) -> IO[str]:
    lock_path = path.with_name(path.name + ".lock")
    lock = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise StorageError(
            f"{path} is in use by another GoTask node (pid {owner}); one node owns a "
            "SQLite file: --join that node instead") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _check_and_migrate(conn: sqlite3.Connection, path: Path) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if app_id == 0 and version == 0 and tables == 0:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    elif app_id != APPLICATION_ID:
        raise StorageError(f"{path} is not a GoTask database (a foreign SQLite file, "
                           f"application_id {app_id}); choose another path")
    elif version > SCHEMA_VERSION:
        raise StorageError(f"{path} has schema version {version}, newer than this GoTask "
                           f"({SCHEMA_VERSION}); upgrade GoTask")
    if version > 0:
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            problem = " ".join(str(problem).replace("***", "").split())
            raise StorageError(f"{path} is corrupt ({problem}); restore it from a backup")
    _migrate(conn, version)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply every migration past `version` in one transaction."""
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (`executescript` would commit on its own)."""
    out: list[str] = []
    current = ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StorageError(f"SQLite refused WAL mode (journal_mode is {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB of page cache
    conn.execute("PRAGMA wal_autocheckpoint = 4000")
