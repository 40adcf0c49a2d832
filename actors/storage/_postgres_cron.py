"""The PostgreSQL backend's cron block (issue 15): its table, functions and SQL calls.

Rules of this module: those of `_postgres_functions` and `_postgres_codec`, and of the
contract's cron block (`_base_cron`). The fire function's compare-and-set is one
`UPDATE ... WHERE last_tick = expected`: at READ COMMITTED a concurrent fire of the same
tick waits on the row lock, re-reads the row and matches nothing ("stale"). The jobs are
enqueued by the `enqueue` function in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import base as b

__all__ = ["CRON_ENCODERS", "CRON_SQL"]

Rows = Sequence[Any]
_NULLS = "NULL::text, NULL::text, NULL::double precision, NULL::bigint, NULL::boolean, NULL::text"
_COLS = "c.name, c.definition, c.node, c.registered_at, c.last_tick, c.paused, c.last_job"

CRON_SQL = f"""
CREATE TABLE @S@.cron_entries (
    name text COLLATE "C" PRIMARY KEY,
    definition text NOT NULL,
    node text NOT NULL,
    registered_at double precision NOT NULL,
    last_tick bigint NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    last_job text
);

CREATE FUNCTION @S@.cron_register(p_node text, p_names text[], p_defs text[],
    p_now double precision)
RETURNS TABLE (kind text, name text, definition text, node text,
    registered_at double precision, last_tick bigint, paused boolean, last_job text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := @S@.clock(p_now);
BEGIN
    RETURN QUERY SELECT 'changed'::text, c.name, {_NULLS}
    FROM unnest(p_names, p_defs) WITH ORDINALITY AS i(name, def, ord)
    JOIN @S@.cron_entries c ON c.name = i.name
    WHERE c.definition <> i.def ORDER BY i.ord;
    INSERT INTO @S@.cron_entries AS c (name, definition, node, registered_at, last_tick)
    SELECT i.name, i.def, p_node, v_now, floor(v_now)::bigint
    FROM unnest(p_names, p_defs) AS i(name, def)
    ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
        node = excluded.node, registered_at = excluded.registered_at;
    RETURN QUERY SELECT 'state'::text, {_COLS}
    FROM unnest(p_names) WITH ORDINALITY AS i(name, ord)
    JOIN @S@.cron_entries c ON c.name = i.name ORDER BY i.ord;
    RETURN QUERY SELECT 'unknown'::text, c.name, {_NULLS}
    FROM @S@.cron_entries c WHERE c.name <> ALL(p_names) ORDER BY c.name;
END $$;

CREATE FUNCTION @S@.cron_fire(p_name text, p_expected bigint, p_tick bigint,
    p_ids text[], p_tasks text[], p_queues text[], p_args bytea[], p_priorities integer[],
    p_delays double precision[], p_max_attempts integer[], p_timeouts double precision[],
    p_ttls double precision[], p_keys text[], p_now double precision)
RETURNS TABLE (outcome text, last_tick bigint, ids text[], now double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_paused boolean;
    v_last bigint;
    v_ids text[];
BEGIN
    UPDATE @S@.cron_entries c SET last_tick = p_tick
    WHERE c.name = p_name AND c.last_tick = p_expected AND p_tick <= v_now
    RETURNING c.paused INTO v_paused;
    IF NOT FOUND THEN
        SELECT c.last_tick INTO v_last FROM @S@.cron_entries c WHERE c.name = p_name;
        RETURN QUERY SELECT CASE WHEN NOT FOUND THEN 'missing'
            WHEN p_tick > v_now THEN 'early' ELSE 'stale' END, v_last, '{{}}'::text[], v_now;
        RETURN;
    END IF;
    IF v_paused THEN
        RETURN QUERY SELECT 'paused'::text, p_tick, '{{}}'::text[], v_now;
        RETURN;
    END IF;
    IF cardinality(p_ids) > 0 THEN
        SELECT array_agg(e.job_id ORDER BY e.ord) INTO v_ids
        FROM @S@.enqueue(p_ids, p_tasks, p_queues, p_args, p_priorities, p_delays,
            p_max_attempts, p_timeouts, p_ttls, p_keys, p_now) WITH ORDINALITY
            AS e(job_id, created, ord);
        UPDATE @S@.cron_entries c SET last_job = v_ids[cardinality(v_ids)]
        WHERE c.name = p_name;
    END IF;
    RETURN QUERY SELECT 'fired'::text, p_tick, coalesce(v_ids, '{{}}'::text[]), v_now;
END $$;
"""


def _state(row: Any, start: int = 0) -> b.CronState:
    r = tuple(row)[start:start + 7]
    return b.CronState(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def _registered(rows: Rows) -> b.CronRegisterReply:
    states = tuple(_state(r, 1) for r in rows if r[0] == "state")
    changed = tuple(r[1] for r in rows if r[0] == "changed")
    unknown = tuple(r[1] for r in rows if r[0] == "unknown")
    return b.CronRegisterReply(states, changed, unknown)


def _fire_args(c: b.CronFire, now: float | None) -> tuple[Any, ...]:
    jobs = c.jobs
    return (
        c.name, c.expected, c.tick, [j.id for j in jobs], [j.task for j in jobs],
        [j.queue for j in jobs], [j.args for j in jobs], [j.priority for j in jobs],
        [float(j.delay_s) for j in jobs], [j.max_attempts for j in jobs],
        [None if j.timeout_s is None else float(j.timeout_s) for j in jobs],
        [float(j.result_ttl_s) for j in jobs], [j.idempotency_key for j in jobs], now,
    )  # fmt: skip


#: Command type -> (SQL, arguments, decoder), given the quoted schema and storage time.
CRON_ENCODERS: dict[type, Callable[[Any, str, float | None],
                                   tuple[str, tuple[Any, ...], Callable[[Rows], Any]]]] = {
    b.CronRegister: lambda c, s, now: (
        f"SELECT * FROM {s}.cron_register($1, $2, $3, $4)",
        (c.node, [e.name for e in c.entries], [e.definition for e in c.entries], now),
        _registered),
    b.CronFire: lambda c, s, now: (
        f"SELECT * FROM {s}.cron_fire($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
        "$13, $14)", _fire_args(c, now),
        lambda rows: b.CronFireReply(rows[0][0], rows[0][1], tuple(rows[0][2]), rows[0][3])),
    b.CronList: lambda c, s, now: (
        f"SELECT {_COLS} FROM {s}.cron_entries c ORDER BY c.name", (),
        lambda rows: b.CronListReply(tuple(_state(r) for r in rows))),
    b.CronSetPaused: lambda c, s, now: (
        f"WITH u AS (UPDATE {s}.cron_entries SET paused = $2 WHERE name = $1 RETURNING 1) "
        "SELECT count(*) > 0 FROM u", (c.name, c.paused),
        lambda rows: b.CronSetPausedReply(bool(rows[0][0]))),
}
