"""The PostgreSQL schema: tables, indexes and count triggers, as versioned migrations.

Rules of this module:
- Pure text: no IO. `migrations(schema)` renders every migration for one schema name
  (`@S@` stands for the quoted schema, `@CHAN@` for the events channel); the backend
  applies the missing ones at node start under an advisory lock, `gotask migrate
  --print-sql` prints them for a DBA.
- A migration is never edited once released: a change is a new version appended.
- Times are `double precision` seconds since the epoch on the database's clock, the
  storage clock of the contract (microseconds kept; tests use whole seconds).
- `jobs` keeps the columns of `JobRecord` in its field order (so `JOB_COLUMNS` builds a
  record positionally), then `seq` (enqueue order) and `watched` (a watcher asked: its
  changes are notified). Job counts live in `counts` plus `count_deltas`: every job
  function appends, in the statement that moves jobs, one delta per (queue, state) it
  changed, with no lock shared between transactions; `count_jobs()` (and each purge)
  folds the deltas into `counts`. So jobs change only through the functions.
- The job functions (module `_postgres_functions`) come with migration 1.
"""

from __future__ import annotations

import re

from gotask._errors import ConfigError

__all__ = [
    "JOB_COLUMNS",
    "SCHEMA_VERSION",
    "channel",
    "check_schema",
    "migration_script",
    "migrations",
]

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")

#: The columns of `JobRecord`, in its field order.
JOB_COLUMNS = (
    "id, task, queue, args, priority, state, created_at, due_at, max_attempts, result_ttl_s, "
    "attempt, releases, attempt_base, settled_attempt, leased_at, finished_at, "
    "lease_expires_at, lease_node, timeout_s, result, error_type, error, traceback, "
    "progress, progress_message, idempotency_key, cancel_requested, expires_at, "
    "started_attempt, unstarted_expiries, history, history_dropped"
)

_TABLES = """
CREATE TABLE @S@.jobs (
    id text COLLATE "C" PRIMARY KEY,
    task text NOT NULL,
    queue text COLLATE "C" NOT NULL,
    args bytea NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    state text COLLATE "C" NOT NULL,
    created_at double precision NOT NULL,
    due_at double precision NOT NULL,
    max_attempts integer NOT NULL,
    result_ttl_s double precision NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    releases integer NOT NULL DEFAULT 0,
    attempt_base integer NOT NULL DEFAULT 0,
    settled_attempt integer NOT NULL DEFAULT 0,
    leased_at double precision,
    finished_at double precision,
    lease_expires_at double precision,
    lease_node text,
    timeout_s double precision,
    result bytea,
    error_type text,
    error text,
    traceback text,
    progress double precision NOT NULL DEFAULT 0,
    progress_message text NOT NULL DEFAULT '',
    idempotency_key text,
    cancel_requested boolean NOT NULL DEFAULT false,
    expires_at double precision,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    watched boolean NOT NULL DEFAULT false
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
CREATE UNIQUE INDEX jobs_idempotency ON @S@.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_ready ON @S@.jobs (queue, priority DESC, due_at, seq)
    WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON @S@.jobs (queue, due_at) WHERE state = 'scheduled';
CREATE INDEX jobs_leases ON @S@.jobs (lease_expires_at) WHERE state = 'active';
CREATE INDEX jobs_finished ON @S@.jobs (expires_at)
    WHERE state IN ('succeeded', 'cancelled');
CREATE INDEX jobs_dead ON @S@.jobs (id) WHERE state = 'dead';

CREATE TABLE @S@.counts (
    queue text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (queue, state)
);
CREATE TABLE @S@.count_deltas (
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);

CREATE TABLE @S@.fair (
    node text NOT NULL,
    queue text NOT NULL,
    credit integer NOT NULL,
    PRIMARY KEY (node, queue)
);
CREATE TABLE @S@.nodes (
    node text COLLATE "C" PRIMARY KEY,
    info bytea NOT NULL,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL,
    expires_at double precision NOT NULL
);

"""


def check_schema(name: str) -> str:
    """`name` if it is a valid schema name (lower case, digits, _; at most 48 characters).

    Raises:
        ConfigError: it is not.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"schema must be 1-48 characters of a-z 0-9 _ (not starting with a digit), "
            f"got {name!r}")
    return name


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's events."""
    return f"{schema}_events"


def _render(sql: str, schema: str) -> str:
    return sql.replace("@S@", f'"{schema}"').replace("@CHAN@", channel(schema))


def migrations(schema: str) -> list[tuple[int, str]]:
    """Every migration as (version, SQL) for `schema`, in order."""
    from ._postgres_attempts import ATTEMPTS_SQL
    from ._postgres_cron import CRON_SQL
    from ._postgres_functions import FUNCTIONS
    from ._postgres_queues import QUEUES_SQL, READY_DUE_SQL, TASK_SQL

    check_schema(schema)
    return [(1, _render(_TABLES + FUNCTIONS, schema)),
            (2, _render(CRON_SQL, schema)),  # cron (issue 15)
            (3, _render(QUEUES_SQL, schema)),  # paused queues (issue 16)
            (4, _render(TASK_SQL, schema)),  # listing jobs by task (issue 16)
            (5, _render(READY_DUE_SQL, schema)),  # the oldest ready job (issue 16)
            (6, _render(ATTEMPTS_SQL, schema))]  # attempt history (issues 21, 22)


#: The newest migration's version.
SCHEMA_VERSION = 6


def migration_script(schema: str) -> str:
    """All migrations as one script a DBA can apply with psql (one transaction)."""
    quoted = f'"{check_schema(schema)}"'
    parts = [
        "BEGIN;",
        f"CREATE SCHEMA IF NOT EXISTS {quoted};",
        f"CREATE TABLE IF NOT EXISTS {quoted}.migrations "
        "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
    ]
    for version, sql in migrations(schema):
        parts += [f"-- migration {version}", sql.strip(),
                  f"INSERT INTO {quoted}.migrations (version) VALUES ({version});"]
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"
