"""The PostgreSQL functions of control and maintenance: cancel, expired leases, promotion,
purges, the DLQ, counts and the node registry.

Rules of this module: those of `_postgres_functions` (which joins this text to its own).
"""

from __future__ import annotations

__all__ = ["CONTROL"]

#: The functions, as text of migration 1.
CONTROL = """
CREATE FUNCTION @S@.cancel(p_ids text[], p_now double precision) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_watched text[];
    v_requested text[];
    v_count bigint;
BEGIN
    WITH upd AS (
        UPDATE @S@.jobs j SET state = 'cancelled', finished_at = v_now,
            lease_expires_at = NULL, expires_at = v_now + j.result_ttl_s
        FROM (SELECT id, state FROM @S@.jobs WHERE id = ANY(p_ids)
              AND state IN ('queued', 'scheduled') ORDER BY id FOR UPDATE) o
        WHERE j.id = o.id AND j.state = o.state
        RETURNING j.id, j.watched, j.queue, j.state, o.state AS old_state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, old_state AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(id) FILTER (WHERE watched) INTO v_watched FROM upd;
    WITH a AS (
        UPDATE @S@.jobs SET cancel_requested = true
        WHERE id = ANY(p_ids) AND state = 'active'
        RETURNING id, lease_node, attempt, watched
    ) SELECT count(pg_notify('@CHAN@', json_build_array('c', id, lease_node, attempt)::text)),
        array_agg(id) FILTER (WHERE watched)
    INTO v_count, v_requested FROM a;
    PERFORM @S@.notify_ids(v_watched || v_requested);
    RETURN @S@.states(p_ids);
END $$;

CREATE FUNCTION @S@.requeue_expired(p_limit integer, p_now double precision)
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
        SELECT id FROM @S@.jobs WHERE state = 'active' AND lease_expires_at <= v_now
        ORDER BY lease_expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE @S@.jobs j SET error_type = 'LeaseExpired',
            error = format('lease of attempt %s on node %s expired', j.attempt,
                           '''' || j.lease_node || ''''),
            traceback = NULL, lease_expires_at = NULL,
            state = CASE WHEN j.cancel_requested THEN 'cancelled'
                WHEN @S@.exhausted(j) THEN 'dead' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested OR @S@.exhausted(j) THEN v_now
                ELSE j.finished_at END,
            expires_at = CASE WHEN j.cancel_requested THEN v_now + j.result_ttl_s
                WHEN @S@.exhausted(j) THEN NULL ELSE j.expires_at END
        FROM e WHERE j.id = e.id AND j.state = 'active' AND j.lease_expires_at <= v_now
        RETURNING j.id, j.queue, j.state, j.watched
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'active'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT coalesce(array_agg(id) FILTER (WHERE state = 'queued'), '{}'),
           coalesce(array_agg(id) FILTER (WHERE state = 'dead'), '{}'),
           coalesce(array_agg(id) FILTER (WHERE state = 'cancelled'), '{}'),
           array_agg(queue) FILTER (WHERE state = 'queued'),
           array_agg(id) FILTER (WHERE watched)
    INTO v_queued, v_dead, v_cancelled, v_ready, v_watched FROM upd;
    PERFORM @S@.notify_ready(v_ready);
    PERFORM @S@.notify_ids(v_watched);
    RETURN QUERY SELECT v_queued, v_dead, v_cancelled;
END $$;

CREATE FUNCTION @S@.promote(p_limit integer, p_now double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_queues text[];
BEGIN
    WITH d AS (
        SELECT id FROM @S@.jobs WHERE state = 'scheduled' AND due_at <= v_now
        ORDER BY due_at, seq LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE @S@.jobs j SET state = 'queued' FROM d
        WHERE j.id = d.id AND j.state = 'scheduled' RETURNING j.queue, j.state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'scheduled'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(queue) INTO v_queues FROM upd;
    PERFORM @S@.notify_ready(v_queues);
    RETURN coalesce(cardinality(v_queues), 0);
END $$;

CREATE FUNCTION @S@.purge_expired(p_limit integer, p_now double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_count integer;
BEGIN
    WITH d AS (
        SELECT id FROM @S@.jobs WHERE state IN ('succeeded', 'cancelled')
            AND expires_at <= v_now
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), del AS (
        DELETE FROM @S@.jobs j USING d WHERE j.id = d.id RETURNING j.id, j.queue, j.state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, -count(*) FROM del GROUP BY queue, state
    ) SELECT count(*) INTO v_count FROM del;
    PERFORM @S@.fold_counts();
    RETURN v_count;
END $$;

CREATE FUNCTION @S@.retry_dead(p_ids text[], p_now double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_queues text[];
BEGIN
    WITH upd AS (
        UPDATE @S@.jobs SET state = 'queued', attempt_base = attempt - releases,
            due_at = v_now, finished_at = NULL, expires_at = NULL, cancel_requested = false
        WHERE state = 'dead' AND (p_ids IS NULL OR id = ANY(p_ids)) RETURNING queue, state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'dead'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(queue) INTO v_queues FROM upd;
    PERFORM @S@.notify_ready(v_queues);
    RETURN coalesce(cardinality(v_queues), 0);
END $$;

CREATE FUNCTION @S@.watch(p_ids text[]) RETURNS SETOF @S@.jobs LANGUAGE plpgsql AS $$
DECLARE
    v_ready text[];
BEGIN
    -- Flag first (waiting on the row locks of batches changing them), then read in a new
    -- snapshot: a change committed before the flag is read here, one after it notified.
    -- Leases skip the rows it locks: their queues are announced ready again at commit.
    WITH upd AS (
        UPDATE @S@.jobs SET watched = true WHERE id = ANY(p_ids) AND NOT watched
        RETURNING queue, state
    ) SELECT array_agg(queue) FILTER (WHERE state = 'queued') INTO v_ready FROM upd;
    PERFORM @S@.notify_ready(v_ready);
    RETURN QUERY SELECT * FROM @S@.jobs WHERE id = ANY(p_ids);
END $$;

CREATE FUNCTION @S@.purge_dead(p_ids text[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    WITH del AS (
        DELETE FROM @S@.jobs WHERE state = 'dead' AND (p_ids IS NULL OR id = ANY(p_ids))
        RETURNING queue, state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, -count(*) FROM del GROUP BY queue, state
    ) SELECT count(*) INTO v_count FROM del;
    RETURN v_count;
END $$;

CREATE FUNCTION @S@.fold_counts() RETURNS void LANGUAGE sql AS $$
    WITH d AS (DELETE FROM @S@.count_deltas RETURNING queue, state, n)
    INSERT INTO @S@.counts AS c (queue, state, n)
    SELECT queue, state, sum(n) FROM d GROUP BY queue, state ORDER BY queue, state
    ON CONFLICT (queue, state) DO UPDATE SET n = c.n + excluded.n;
$$;

CREATE FUNCTION @S@.count_jobs() RETURNS TABLE (queue text, state text, n bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM @S@.fold_counts();
    RETURN QUERY
    SELECT c.queue, c.state, sum(c.n)::bigint FROM (
        SELECT queue, state, n FROM @S@.counts
        UNION ALL SELECT queue, state, n FROM @S@.count_deltas
    ) c GROUP BY c.queue, c.state HAVING sum(c.n) > 0 ORDER BY c.queue, c.state;
END $$;

CREATE FUNCTION @S@.register_node(p_node text, p_info bytea, p_ttl double precision,
                                  p_max integer, p_now double precision)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @S@.nodes WHERE node = p_node) THEN
        SELECT count(*) INTO v_count FROM @S@.nodes;
        IF v_count >= p_max THEN
            RAISE EXCEPTION USING ERRCODE = 'GT001',
                MESSAGE = format('%s nodes registered; nodes_max=%s', v_count, p_max);
        END IF;
    END IF;
    INSERT INTO @S@.nodes AS o (node, info, first_seen, last_seen, expires_at)
    VALUES (p_node, p_info, v_now, v_now, v_now + p_ttl)
    ON CONFLICT (node) DO UPDATE SET info = excluded.info, last_seen = excluded.last_seen,
        expires_at = excluded.expires_at;
    RETURN v_now + p_ttl;
END $$;

CREATE FUNCTION @S@.expire_nodes(p_now double precision) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_gone text[];
BEGIN
    WITH d AS (DELETE FROM @S@.nodes WHERE expires_at <= v_now RETURNING node)
    SELECT coalesce(array_agg(node ORDER BY node), '{}') INTO v_gone FROM d;
    DELETE FROM @S@.fair WHERE node = ANY(v_gone);
    RETURN v_gone;
END $$;
"""
