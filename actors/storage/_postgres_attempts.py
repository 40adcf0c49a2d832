"""Migration 6 of the PostgreSQL schema: attempt history and attempts that count only what
ran (issues 21 and 22).

Rules of this module: those of `_postgres_schema` (pure text, `@S@` the schema). The
migration adds the `JobRecord` columns `started_attempt`, `unstarted_expiries`,
`history` (a jsonb array of `_history` entries) and `history_dropped`, and replaces the
functions that end an attempt (ack, nack, release, lease expiry) so that each appends
the attempt's entry in the statement that ends it; the heartbeat gains `p_started`.
"""

from __future__ import annotations

from gotask._job import ATTEMPT_ERROR_CHARS_MAX, HISTORY_MAX, UNSTARTED_FREE_MAX

from ._postgres_functions import NOW, settle_functions

__all__ = ["ATTEMPTS_SQL"]


def _ended(outcome: str, error: str) -> str:
    """SET clauses that append the ending attempt of row `j` to its history."""
    return (
        ",\n            history = @S@.with_attempt(j.history, jsonb_build_array(j.attempt, "
        f"j.lease_node, j.leased_at, v_now, {outcome}, {error})),\n"
        "            history_dropped = j.history_dropped"
        f" + (jsonb_array_length(j.history) >= {HISTORY_MAX})::int")


_ERROR = f"left(p.etype || ': ' || coalesce(p.err, ''), {ATTEMPT_ERROR_CHARS_MAX})"
_MARKS = {
    "@ACK_ENDED@": _ended("'succeeded'", "NULL::text"),
    "@NACK_ENDED@": _ended(
        "CASE WHEN p.next = 'cancelled' THEN 'cancelled' ELSE 'failed' END", _ERROR),
    "@RELEASE_ENDED@": _ended("'released'", "NULL::text"),
    "@BEAT_ARGS@": ", p_started boolean",
    "@BEAT_SET@": (",\n        started_attempt = CASE WHEN p_started THEN j.attempt "
                   "ELSE j.started_attempt END"),
}

_COLUMNS = f"""
ALTER TABLE @S@.jobs ADD COLUMN started_attempt integer NOT NULL DEFAULT 0,
    ADD COLUMN unstarted_expiries integer NOT NULL DEFAULT 0,
    ADD COLUMN history jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN history_dropped integer NOT NULL DEFAULT 0;

CREATE FUNCTION @S@.with_attempt(p_history jsonb, p_entry jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_array_length(p_history) >= {HISTORY_MAX}
        THEN (p_history - 0) || jsonb_build_array(p_entry)
        ELSE p_history || jsonb_build_array(p_entry) END
$$;

DROP FUNCTION @S@.heartbeat(text[], integer[], double precision, double precision);
"""

_REQUEUE = f"""
CREATE OR REPLACE FUNCTION @S@.requeue_expired(p_limit integer, p_now double precision)
RETURNS TABLE (requeued text[], dead text[], cancelled text[]) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_queued text[];
    v_dead text[];
    v_cancelled text[];
    v_ready text[];
    v_watched text[];
BEGIN
    WITH e AS (
        SELECT id, attempt, lease_node, CASE WHEN started_attempt = attempt THEN 'node_lost'
            WHEN unstarted_expiries < {UNSTARTED_FREE_MAX} THEN 'not_started'
            ELSE 'lease_expired' END AS outcome
        FROM @S@.jobs WHERE state = 'active' AND lease_expires_at <= v_now
        ORDER BY lease_expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), x AS (
        SELECT id, outcome, (outcome = 'not_started')::int AS free,
            CASE outcome WHEN 'node_lost' THEN 'NodeLost'
                WHEN 'lease_expired' THEN 'LeaseExpired' END AS etype,
            CASE outcome WHEN 'node_lost' THEN format(
                'attempt %s on node %s was running when its node stopped renewing the '
                'lease (the node died, hung or lost storage)', attempt,
                '''' || lease_node || '''')
            WHEN 'lease_expired' THEN format(
                'lease of attempt %s on node %s expired before the job was known to '
                'start ({UNSTARTED_FREE_MAX} such expiries were free already)', attempt,
                '''' || lease_node || '''') END AS err
        FROM e
    ), upd AS (
        UPDATE @S@.jobs j SET releases = j.releases + x.free,
            unstarted_expiries = j.unstarted_expiries + x.free,
            error_type = coalesce(x.etype, j.error_type),
            error = CASE WHEN x.etype IS NULL THEN j.error ELSE x.err END,
            traceback = CASE WHEN x.etype IS NULL THEN j.traceback END,
            history = @S@.with_attempt(j.history, jsonb_build_array(j.attempt, j.lease_node,
                j.leased_at, v_now, x.outcome,
                left(x.etype || ': ' || x.err, {ATTEMPT_ERROR_CHARS_MAX}))),
            history_dropped = j.history_dropped
                + (jsonb_array_length(j.history) >= {HISTORY_MAX})::int,
            lease_expires_at = NULL,
            state = CASE WHEN j.cancel_requested THEN 'cancelled'
                WHEN j.attempt - j.releases - x.free - j.attempt_base >= j.max_attempts
                THEN 'dead' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested OR j.attempt - j.releases - x.free
                - j.attempt_base >= j.max_attempts THEN v_now ELSE j.finished_at END,
            expires_at = CASE WHEN j.cancel_requested THEN v_now + j.result_ttl_s
                WHEN j.attempt - j.releases - x.free - j.attempt_base >= j.max_attempts
                THEN NULL ELSE j.expires_at END
        FROM x WHERE j.id = x.id AND j.state = 'active' AND j.lease_expires_at <= v_now
        RETURNING j.id, j.queue, j.state, j.watched
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'active'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT coalesce(array_agg(id) FILTER (WHERE state = 'queued'), '{{}}'),
           coalesce(array_agg(id) FILTER (WHERE state = 'dead'), '{{}}'),
           coalesce(array_agg(id) FILTER (WHERE state = 'cancelled'), '{{}}'),
           array_agg(queue) FILTER (WHERE state = 'queued'),
           array_agg(id) FILTER (WHERE watched)
    INTO v_queued, v_dead, v_cancelled, v_ready, v_watched FROM upd;
    PERFORM @S@.notify_ready(v_ready);
    PERFORM @S@.notify_ids(v_watched);
    RETURN QUERY SELECT v_queued, v_dead, v_cancelled;
END $$;
"""

#: Migration 6's text.
ATTEMPTS_SQL = _COLUMNS + settle_functions(_MARKS).replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") + _REQUEUE.replace("@NOW@", NOW)
