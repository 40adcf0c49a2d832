"""The PostgreSQL functions that apply the storage contract's job commands.

Rules of this module:
- Pure text, rendered by `_postgres_schema` (`@S@` is the schema, `@CHAN@` the channel).
  The hot path is here; control, maintenance, counts and nodes are in `_postgres_control`.
- One function per batched command: one round trip, set-based statements over arrays
  (`unnest ... WITH ORDINALITY` keeps the caller's order), each fenced by the lease token
  (`state = 'active' AND attempt = token`) re-checked under the row lock, so concurrent
  batches of several nodes stay correct at READ COMMITTED.
- `p_now` is the storage time; NULL reads the database clock (`clock_timestamp()`).
- Events: a function that makes jobs ready, schedules them, requests a cancellation or
  changes a watched job calls `pg_notify` on `@CHAN@` with a small JSON array; PostgreSQL
  delivers them at commit and folds identical ones of a transaction into one, so a batch
  sends one "ready" per queue, not one per job.
- Leases lock their rows with `FOR UPDATE SKIP LOCKED`: concurrent leases never wait on
  each other nor take the same job.
"""

from __future__ import annotations

from ._postgres_control import CONTROL

__all__ = ["FUNCTIONS", "NOW", "settle_functions"]

_NOW = NOW = "coalesce(p_now, extract(epoch FROM clock_timestamp()))"

_HELPERS = """
CREATE FUNCTION @S@.clock(p_now double precision) RETURNS double precision
LANGUAGE sql VOLATILE AS $$ SELECT @NOW@ $$;

CREATE FUNCTION @S@.notify_ready(p_queues text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('@CHAN@', json_build_array('r', q)::text)
    FROM (SELECT DISTINCT q FROM unnest(p_queues) q WHERE q IS NOT NULL) d;
END $$;
CREATE FUNCTION @S@.notify_due(p_queues text[], p_due double precision[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('@CHAN@', json_build_array('d', q, min(d))::text)
    FROM unnest(p_queues, p_due) AS x(q, d) WHERE q IS NOT NULL GROUP BY q;
END $$;
CREATE FUNCTION @S@.notify_ids(p_ids text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('@CHAN@', json_build_array('i', i)::text)
    FROM (SELECT DISTINCT i FROM unnest(p_ids) i WHERE i IS NOT NULL) d;
END $$;
"""

_ENQUEUE = """
CREATE FUNCTION @S@.enqueue(
    p_ids text[], p_tasks text[], p_queues text[], p_args bytea[], p_priorities integer[],
    p_delays double precision[], p_max_attempts integer[], p_timeouts double precision[],
    p_ttls double precision[], p_keys text[], p_now double precision
) RETURNS TABLE (job_id text, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_ids text[];
    v_ready text[];
    v_queues text[];
    v_due double precision[];
BEGIN
    WITH ins AS (
        INSERT INTO @S@.jobs AS j (id, task, queue, args, priority, state, created_at,
            due_at, max_attempts, result_ttl_s, timeout_s, idempotency_key)
        SELECT i.id, i.task, i.queue, i.args, i.priority,
            CASE WHEN i.delay > 0 THEN 'scheduled' ELSE 'queued' END, v_now,
            v_now + i.delay, i.max_attempts, i.ttl, i.timeout, i.key
        FROM unnest(p_ids, p_tasks, p_queues, p_args, p_priorities, p_delays,
                    p_max_attempts, p_timeouts, p_ttls, p_keys) WITH ORDINALITY
            AS i(id, task, queue, args, priority, delay, max_attempts, timeout, ttl, key, ord)
        ORDER BY i.ord
        ON CONFLICT DO NOTHING
        RETURNING j.id, j.queue, j.state, j.due_at
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, count(*) FROM ins GROUP BY queue, state
    )
    SELECT array_agg(id), array_agg(queue) FILTER (WHERE state = 'queued'),
        array_agg(queue) FILTER (WHERE state = 'scheduled'),
        array_agg(due_at) FILTER (WHERE state = 'scheduled')
    INTO v_ids, v_ready, v_queues, v_due FROM ins;
    PERFORM @S@.notify_ready(v_ready);
    PERFORM @S@.notify_due(v_queues, v_due);
    RETURN QUERY
    SELECT CASE WHEN c.made THEN c.id ELSE coalesce(k.id, c.id) END, c.made
    FROM (
        SELECT i.id, i.key, i.ord,
            i.id = ANY(coalesce(v_ids, '{}'))
                AND i.ord = min(i.ord) OVER (PARTITION BY i.id) AS made
        FROM unnest(p_ids, p_keys) WITH ORDINALITY AS i(id, key, ord)
    ) c
    LEFT JOIN @S@.jobs k ON k.idempotency_key = c.key
    ORDER BY c.ord;
END $$;
"""

_LEASE = """
CREATE FUNCTION @S@.pick(p_queue text, p_limit integer) RETURNS text[]
LANGUAGE sql AS $$
    SELECT ARRAY(SELECT id FROM @S@.jobs WHERE state = 'queued' AND queue = p_queue
                 ORDER BY priority DESC, due_at, seq LIMIT p_limit FOR UPDATE SKIP LOCKED)
$$;

CREATE FUNCTION @S@.fair_pick(p_node text, p_queues text[], p_weights integer[],
                                p_limit integer) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_queues);
    v_all text[] := '{}';
    v_start integer[] := '{}';
    v_cap integer[] := '{}';
    v_taken integer[] := '{}';
    v_credit integer[];
    v_ids text[] := '{}';
    v_bound integer := 0;
    v_live integer := 0;
    v_best integer;
    v_best_credit bigint;
    v_total integer;
BEGIN
    FOR i IN 1..n LOOP
        v_start[i] := cardinality(v_all);
        v_all := v_all || @S@.pick(p_queues[i], p_limit);
        v_cap[i] := cardinality(v_all) - v_start[i];
        v_taken[i] := 0;
        v_bound := v_bound + p_weights[i];
        IF v_cap[i] > 0 THEN v_live := v_live + 1; END IF;
    END LOOP;
    v_credit := ARRAY(
        SELECT coalesce(f.credit, 0)
        FROM unnest(p_queues) WITH ORDINALITY AS q(name, ord)
        LEFT JOIN @S@.fair f ON f.node = p_node AND f.queue = q.name ORDER BY q.ord);
    WHILE v_live > 0 AND cardinality(v_ids) < p_limit LOOP
        IF v_live = 1 THEN
            FOR i IN 1..n LOOP
                IF v_taken[i] < v_cap[i] THEN
                    v_ids := v_ids || v_all[v_start[i] + v_taken[i] + 1 :
                        v_start[i] + least(v_cap[i], v_taken[i] + p_limit - cardinality(v_ids))];
                END IF;
            END LOOP;
            EXIT;
        END IF;
        v_best := 0; v_best_credit := -9223372036854775807; v_total := 0;
        FOR i IN 1..n LOOP
            IF v_taken[i] < v_cap[i] THEN
                v_credit[i] := least(v_credit[i] + p_weights[i], v_bound);
                v_total := v_total + p_weights[i];
                IF v_credit[i] > v_best_credit THEN
                    v_best := i; v_best_credit := v_credit[i];
                END IF;
            END IF;
        END LOOP;
        v_credit[v_best] := greatest(v_best_credit - v_total, -v_bound);
        v_taken[v_best] := v_taken[v_best] + 1;
        v_ids := v_ids || v_all[v_start[v_best] + v_taken[v_best]];
        IF v_taken[v_best] = v_cap[v_best] THEN v_live := v_live - 1; END IF;
    END LOOP;
    INSERT INTO @S@.fair AS f (node, queue, credit)
    SELECT p_node, q, c FROM unnest(p_queues, v_credit) AS u(q, c) ORDER BY q
    ON CONFLICT (node, queue) DO UPDATE SET credit = excluded.credit;
    RETURN v_ids;
END $$;

CREATE FUNCTION @S@.lease(p_node text, p_queues text[], p_weights integer[],
                          p_limit integer, p_timeout double precision, p_promote integer,
                          p_now double precision)
RETURNS TABLE (pick bigint, t_now double precision, t_next double precision,
               job @S@.jobs) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_ids text[];
    v_next double precision;
    v_promoted text[];
BEGIN
    WITH upd AS (
        UPDATE @S@.jobs SET state = 'queued' WHERE id IN (
            SELECT s.id FROM unnest(p_queues) AS q(name), LATERAL (
                SELECT id FROM @S@.jobs WHERE state = 'scheduled' AND queue = q.name
                    AND due_at <= v_now ORDER BY due_at LIMIT p_promote FOR UPDATE SKIP LOCKED
            ) s)
        RETURNING queue, state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'scheduled'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(DISTINCT queue) INTO v_promoted FROM upd;
    -- Leases elsewhere skipped the promoted rows while locked: announce them at commit.
    PERFORM @S@.notify_ready(v_promoted);
    IF cardinality(p_queues) = 1 THEN
        v_ids := @S@.pick(p_queues[1], p_limit);
    ELSE
        v_ids := @S@.fair_pick(p_node, p_queues, p_weights, p_limit);
    END IF;
    SELECT min(d.due_at) INTO v_next FROM unnest(p_queues) AS q(name), LATERAL (
        SELECT due_at FROM @S@.jobs WHERE state = 'scheduled' AND queue = q.name
        ORDER BY due_at LIMIT 1) d;
    RETURN QUERY
    WITH picked AS (SELECT id, ord FROM unnest(v_ids) WITH ORDINALITY AS p(id, ord)),
    upd AS (
        UPDATE @S@.jobs j SET state = 'active', attempt = j.attempt + 1, leased_at = v_now,
            lease_expires_at = v_now + p_timeout, lease_node = p_node
        FROM picked WHERE j.id = picked.id
        RETURNING picked.ord, j, j.queue, j.state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'queued'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT upd.ord, v_now, v_next, upd.j FROM upd
    UNION ALL SELECT 0, v_now, v_next, NULL::@S@.jobs ORDER BY 1;
END $$;
"""

_SETTLE = """
CREATE FUNCTION @S@.exhausted(j @S@.jobs) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT j.attempt - j.releases - j.attempt_base >= j.max_attempts
$$;

CREATE FUNCTION @S@.fence(p_ids text[], p_attempts integer[], p_done bigint[])
RETURNS text[] LANGUAGE sql AS $$
    SELECT ARRAY(
        SELECT CASE WHEN i.ord = ANY(coalesce(p_done, '{}')) THEN 'ok'
            WHEN j.id IS NOT NULL AND i.attempt <> 0 AND j.settled_attempt = i.attempt
                THEN 'duplicate'
            ELSE 'stale' END
        FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS i(id, attempt, ord)
        LEFT JOIN @S@.jobs j ON j.id = i.id ORDER BY i.ord)
$$;

CREATE FUNCTION @S@.states(p_ids text[]) RETURNS text[] LANGUAGE sql AS $$
    SELECT ARRAY(
        SELECT coalesce(j.state, 'missing')
        FROM unnest(p_ids) WITH ORDINALITY AS i(id, ord)
        LEFT JOIN @S@.jobs j ON j.id = i.id ORDER BY i.ord)
$$;

CREATE FUNCTION @S@.ack(p_ids text[], p_attempts integer[], p_results bytea[],
                        p_now double precision) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_done bigint[];
    v_watched text[];
BEGIN
    WITH u AS (
        SELECT DISTINCT ON (id, attempt) id, attempt, result, ord
        FROM unnest(p_ids, p_attempts, p_results) WITH ORDINALITY AS i(id, attempt, result, ord)
        ORDER BY id, attempt, ord
    ), upd AS (
        UPDATE @S@.jobs j SET state = 'succeeded', settled_attempt = u.attempt,
            result = u.result, error_type = NULL, error = NULL, traceback = NULL,
            progress = 1.0, finished_at = v_now, lease_expires_at = NULL,
            expires_at = v_now + j.result_ttl_s@ACK_ENDED@
        FROM u WHERE j.id = u.id AND j.state = 'active' AND j.attempt = u.attempt
        RETURNING u.ord, j.id, j.watched, j.queue, j.state
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'active'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(ord), array_agg(id) FILTER (WHERE watched) INTO v_done, v_watched
    FROM upd;
    PERFORM @S@.notify_ids(v_watched);
    IF cardinality(v_done) = cardinality(p_ids) THEN  -- the usual case: no lookup
        RETURN array_fill('ok'::text, ARRAY[cardinality(p_ids)]);
    END IF;
    RETURN @S@.fence(p_ids, p_attempts, v_done);
END $$;

CREATE FUNCTION @S@.nack(p_ids text[], p_attempts integer[], p_types text[], p_errors text[],
                         p_tracebacks text[], p_delays double precision[], p_outcomes text[],
                         p_now double precision)
RETURNS TABLE (statuses text[], states text[]) LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_done bigint[];
    v_queues text[];
    v_due double precision[];
    v_watched text[];
BEGIN
    WITH u AS (
        SELECT DISTINCT ON (id, attempt) *
        FROM unnest(p_ids, p_attempts, p_types, p_errors, p_tracebacks, p_delays, p_outcomes)
            WITH ORDINALITY AS i(id, attempt, etype, err, tb, delay, outcome, ord)
        ORDER BY id, attempt, ord
    ), plan AS (
        SELECT u.*, CASE
            WHEN u.outcome = 'cancelled' OR (u.outcome = 'retry' AND j.cancel_requested)
                THEN 'cancelled'
            WHEN u.outcome = 'dead' OR @S@.exhausted(j) THEN 'dead'
            ELSE 'scheduled' END AS next
        FROM u JOIN @S@.jobs j ON j.id = u.id AND j.state = 'active' AND j.attempt = u.attempt
        ORDER BY u.id FOR UPDATE OF j
    ), upd AS (
        UPDATE @S@.jobs j SET settled_attempt = p.attempt, error_type = p.etype,
            error = p.err, traceback = p.tb, lease_expires_at = NULL, state = p.next,
            due_at = CASE WHEN p.next = 'scheduled' THEN v_now + coalesce(p.delay, 0)
                ELSE j.due_at END,
            finished_at = CASE WHEN p.next = 'scheduled' THEN j.finished_at ELSE v_now END,
            expires_at = CASE WHEN p.next = 'cancelled' THEN v_now + j.result_ttl_s
                ELSE NULL END@NACK_ENDED@
        FROM plan p WHERE j.id = p.id
        RETURNING p.ord, j.id, j.queue, j.state, j.due_at, j.watched
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'active'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(ord), array_agg(queue) FILTER (WHERE state = 'scheduled'),
        array_agg(due_at) FILTER (WHERE state = 'scheduled'),
        array_agg(id) FILTER (WHERE watched)
    INTO v_done, v_queues, v_due, v_watched FROM upd;
    PERFORM @S@.notify_due(v_queues, v_due);
    PERFORM @S@.notify_ids(v_watched);
    RETURN QUERY SELECT @S@.fence(p_ids, p_attempts, v_done), @S@.states(p_ids);
END $$;

CREATE FUNCTION @S@.release(p_ids text[], p_attempts integer[], p_now double precision)
RETURNS TABLE (statuses text[], states text[]) LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
    v_done bigint[];
    v_ready text[];
    v_watched text[];
BEGIN
    WITH u AS (
        SELECT DISTINCT ON (id, attempt) id, attempt, ord
        FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS i(id, attempt, ord)
        ORDER BY id, attempt, ord
    ), upd AS (
        UPDATE @S@.jobs j SET releases = j.releases + 1, lease_expires_at = NULL,
            state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested THEN v_now ELSE j.finished_at END,
            expires_at = CASE WHEN j.cancel_requested THEN v_now + j.result_ttl_s
                ELSE j.expires_at END@RELEASE_ENDED@
        FROM u WHERE j.id = u.id AND j.state = 'active' AND j.attempt = u.attempt
        RETURNING u.ord, j.id, j.queue, j.state, j.watched
    ), moved AS (
        INSERT INTO @S@.count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, 'active'::text AS state, -1 AS n FROM upd
            UNION ALL SELECT queue, state, 1 FROM upd
        ) m GROUP BY queue, state HAVING sum(n) <> 0
    )
    SELECT array_agg(ord), array_agg(queue) FILTER (WHERE state = 'queued'),
        array_agg(id) FILTER (WHERE watched)
    INTO v_done, v_ready, v_watched FROM upd;
    PERFORM @S@.notify_ready(v_ready);
    PERFORM @S@.notify_ids(v_watched);
    RETURN QUERY SELECT @S@.fence(p_ids, p_attempts, v_done), @S@.states(p_ids);
END $$;

CREATE FUNCTION @S@.heartbeat(p_ids text[], p_attempts integer[], p_timeout double precision,
                              p_now double precision@BEAT_ARGS@)
RETURNS TABLE (statuses text[], t_now double precision) LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := @S@.clock(p_now);
BEGIN
    UPDATE @S@.jobs j SET lease_expires_at = v_now + p_timeout@BEAT_SET@
    FROM (SELECT DISTINCT id, attempt FROM unnest(p_ids, p_attempts) AS i(id, attempt)) u
    WHERE j.id = u.id AND j.state = 'active' AND j.attempt = u.attempt;
    RETURN QUERY SELECT ARRAY(
        SELECT CASE WHEN j.state = 'active' AND j.attempt = i.attempt
            THEN CASE WHEN j.cancel_requested THEN 'cancel' ELSE 'ok' END
            ELSE 'stale' END
        FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS i(id, attempt, ord)
        LEFT JOIN @S@.jobs j ON j.id = i.id ORDER BY i.ord), v_now;
END $$;

CREATE FUNCTION @S@.progress(p_ids text[], p_attempts integer[],
                             p_fractions double precision[], p_messages text[])
RETURNS boolean[] LANGUAGE plpgsql AS $$
BEGIN
    UPDATE @S@.jobs j SET progress = u.fraction, progress_message = u.message
    FROM (SELECT DISTINCT ON (id, attempt) *
          FROM unnest(p_ids, p_attempts, p_fractions, p_messages) WITH ORDINALITY
              AS i(id, attempt, fraction, message, ord)
          ORDER BY id, attempt, ord DESC) u
    WHERE j.id = u.id AND j.state = 'active' AND j.attempt = u.attempt;
    RETURN ARRAY(
        SELECT coalesce(j.state = 'active' AND j.attempt = i.attempt, false)
        FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS i(id, attempt, ord)
        LEFT JOIN @S@.jobs j ON j.id = i.id ORDER BY i.ord);
END $$;
"""

#: What migration 1 (the functions as first released) puts at each mark of `_SETTLE`.
_V1_MARKS = dict.fromkeys(
    ("@ACK_ENDED@", "@NACK_ENDED@", "@RELEASE_ENDED@", "@BEAT_ARGS@", "@BEAT_SET@"), "")


def settle_functions(marks: dict[str, str]) -> str:
    """The ack, nack, release and heartbeat functions with `marks` filled in (migration 1
    leaves them empty; migration 3 adds the attempt history, `_postgres_attempts`)."""
    text = _SETTLE
    for mark, sql in marks.items():
        text = text.replace(mark, sql)
    return text.replace("@NOW@", _NOW)


#: Every function, as one migration's text.
FUNCTIONS = (_HELPERS + _ENQUEUE + _LEASE).replace("@NOW@", _NOW) + settle_functions(
    _V1_MARKS) + CONTROL.replace("@NOW@", _NOW)
