"""The PostgreSQL backend's queue block (issue 16): paused queues, migration 3.

Rules of this module: those of `_postgres_functions` and `_postgres_codec`, and of the
contract's queue block (`_base_queues`). The paused queues are rows of `paused_queues`;
migration 3 replaces `pick` (the one place a lease reads ready jobs) with one that
finds nothing in a paused queue. Resuming a queue notifies it as ready at commit, so
parked leases of every node lease again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import base as b

__all__ = ["QUEUES_SQL", "QUEUE_ENCODERS", "READY_DUE_SQL", "TASK_SQL"]

Rows = Sequence[Any]

QUEUES_SQL = """
CREATE TABLE @S@.paused_queues (
    queue text COLLATE "C" PRIMARY KEY
);

CREATE OR REPLACE FUNCTION @S@.pick(p_queue text, p_limit integer) RETURNS text[]
LANGUAGE sql AS $$
    SELECT ARRAY(SELECT id FROM @S@.jobs WHERE state = 'queued' AND queue = p_queue
                 AND NOT EXISTS (SELECT 1 FROM @S@.paused_queues p WHERE p.queue = p_queue)
                 ORDER BY priority DESC, due_at, seq LIMIT p_limit
                 FOR UPDATE OF jobs SKIP LOCKED)
$$;

CREATE FUNCTION @S@.set_queue_paused(p_queue text, p_paused boolean) RETURNS text[]
LANGUAGE plpgsql AS $$
BEGIN
    IF p_paused THEN
        INSERT INTO @S@.paused_queues (queue) VALUES (p_queue) ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM @S@.paused_queues WHERE queue = p_queue;
        IF FOUND THEN
            PERFORM @S@.notify_ready(ARRAY[p_queue]);
        END IF;
    END IF;
    RETURN ARRAY(SELECT queue FROM @S@.paused_queues ORDER BY queue);
END $$;
"""

#: Migration 4: `ListJobs(task=...)` walks this index in id order.
TASK_SQL = """
CREATE INDEX jobs_task ON @S@.jobs (task, id);
"""

#: Migration 5: the oldest ready job of a queue is the first entry of this index.
READY_DUE_SQL = """
CREATE INDEX jobs_ready_due ON @S@.jobs (queue, due_at) WHERE state = 'queued';
"""

_READY_QUEUES = """(SELECT queue FROM {s}.counts WHERE state = 'queued' AND n > 0
    UNION SELECT queue FROM {s}.count_deltas WHERE state = 'queued')"""


def _names(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(values))


def _info(rows: Rows) -> b.QueueInfoReply:
    now, paused, ready = rows[0]
    since = sorted((q, float(t)) for q, t in ready if t is not None)
    return b.QueueInfoReply(float(now), _names(paused),
                            tuple(b.QueueReadySince(q, t) for q, t in since))


#: Command type -> (SQL, arguments, decoder), given the quoted schema and storage time.
QUEUE_ENCODERS: dict[type, Callable[[Any, str, float | None],
                                    tuple[str, tuple[Any, ...], Callable[[Rows], Any]]]] = {
    b.SetQueuePaused: lambda c, s, now: (
        f"SELECT {s}.set_queue_paused($1, $2)", (c.queue, c.paused),
        lambda rows: b.SetQueuePausedReply(_names(rows[0][0]))),
    b.QueueInfo: lambda c, s, now: (
        f"SELECT {s}.clock($1), ARRAY(SELECT queue FROM {s}.paused_queues), "
        f"ARRAY(SELECT ROW(q.queue, (SELECT min(due_at) FROM {s}.jobs WHERE "
        f"state = 'queued' AND queue = q.queue)) FROM {_READY_QUEUES.format(s=s)} q)",
        (now,), _info),
}
