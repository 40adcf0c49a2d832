"""How each storage command becomes one SQL call, and how its rows become a reply.

Rules of this module:
- Pure functions: no IO, no clock. `encode(cmd, schema, now)` gives the statement, its
  arguments and whether it may be sent again when a connection broke while its batch
  was committing (outcome unknown); `Plan.decode(rows)` turns asyncpg records into the
  contract's reply (`Leased` for a lease, as the Redis codec does).
- Every command may be resent except `LeaseJobs` (a lease sent twice would hold jobs
  nobody runs until their leases expire). A resent `EnqueueJobs` answers created=True
  for the jobs whose ids it carries (ids are unique), like the Redis backend.
- Statements name the schema explicitly; the storage time `now` is a parameter (None:
  the database clock).
- `merge` joins adjacent enqueues (and acks) of a batch into one call; `split` gives
  each its part of the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import msgpack

from gotask._job import JobRecord

from . import base as b
from ._backend import Leased, WatchRead
from ._history import history_from_json
from ._postgres_cron import CRON_ENCODERS
from ._postgres_queues import QUEUE_ENCODERS
from ._postgres_schema import JOB_COLUMNS
from ._redis_codec import LEASE_PROMOTE_MAX

__all__ = ["Plan", "encode", "merge", "record", "split"]

Rows = Sequence[Any]
_JOB_OF = ", ".join(f"(job).{c.strip()}" for c in JOB_COLUMNS.split(","))


@attrs.frozen
class Plan:
    """One SQL call for one command."""

    sql: str
    args: tuple[Any, ...]
    decode: Callable[[Rows], Any]
    resend: bool = True


def record(row: Any, start: int = 0) -> JobRecord:
    """A job record from the 32 columns of `JOB_COLUMNS` starting at `start`."""
    fields = list(row)[start:start + 32]
    fields[30] = history_from_json(fields[30])
    return JobRecord(*fields)


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)


def _enqueue(cmd: b.EnqueueJobs, s: str, now: float | None) -> Plan:
    jobs = cmd.jobs
    args = (
        [j.id for j in jobs], [j.task for j in jobs], [j.queue for j in jobs],
        [j.args for j in jobs], [j.priority for j in jobs], [float(j.delay_s) for j in jobs],
        [j.max_attempts for j in jobs], [_f(j.timeout_s) for j in jobs],
        [float(j.result_ttl_s) for j in jobs], [j.idempotency_key for j in jobs], now,
    )  # fmt: skip
    sql = f"SELECT job_id, created FROM {s}.enqueue($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    return Plan(sql, args, lambda rows: b.EnqueueReply(
        tuple(r[0] for r in rows), tuple(r[1] for r in rows)))


def enqueue_resent(cmd: b.EnqueueJobs, reply: b.EnqueueReply) -> b.EnqueueReply:
    """The reply to an enqueue sent again: a lost first attempt may have created them."""
    return b.EnqueueReply(reply.ids, tuple(
        i == j.id for i, j in zip(reply.ids, cmd.jobs, strict=True)))


def _lease(cmd: b.LeaseJobs, s: str, now: float | None) -> Plan:
    sql = (f"SELECT t_now, t_next, {_JOB_OF} FROM "
           f"{s}.lease($1, $2, $3, $4, $5, $6, $7) ORDER BY pick")
    args = (cmd.node, [q.name for q in cmd.queues], [q.weight for q in cmd.queues], cmd.limit,
            float(cmd.lease_timeout_s), LEASE_PROMOTE_MAX, now)

    def decode(rows: Rows) -> Leased:
        jobs = tuple(record(r, 2) for r in rows if r[2] is not None)
        return Leased(b.LeaseReply(jobs), rows[0][0], rows[0][1])

    return Plan(sql, args, decode, resend=False)


def _tokens(tokens: tuple[b.LeaseToken, ...]) -> tuple[list[str], list[int]]:
    return [t.job_id for t in tokens], [t.attempt for t in tokens]


def _heartbeat(cmd: b.Heartbeat, s: str, now: float | None) -> Plan:
    ids, attempts = _tokens(cmd.tokens)
    return Plan(f"SELECT statuses, t_now FROM {s}.heartbeat($1, $2, $3, $4, $5)",
                (ids, attempts, float(cmd.lease_timeout_s), now, cmd.started),
                lambda rows: b.HeartbeatReply(
                    tuple(rows[0][0]), rows[0][1] + float(cmd.lease_timeout_s)))


def _ack(cmd: b.AckJobs, s: str, now: float | None) -> Plan:
    items = cmd.items
    return Plan(f"SELECT {s}.ack($1, $2, $3, $4)",
                ([i.job_id for i in items], [i.attempt for i in items],
                 [i.result for i in items], now),
                lambda rows: b.AckReply(tuple(rows[0][0])))


def _nack(cmd: b.NackJobs, s: str, now: float | None) -> Plan:
    it = cmd.items
    args = ([i.job_id for i in it], [i.attempt for i in it], [i.error_type for i in it],
            [i.error for i in it], [i.traceback for i in it], [_f(i.retry_in_s) for i in it],
            [i.outcome for i in it], now)
    return Plan(f"SELECT statuses, states FROM {s}.nack($1, $2, $3, $4, $5, $6, $7, $8)", args,
                lambda rows: b.NackReply(tuple(rows[0][0]), tuple(rows[0][1])))


def _release(cmd: b.ReleaseJobs, s: str, now: float | None) -> Plan:
    ids, attempts = _tokens(cmd.tokens)
    return Plan(f"SELECT statuses, states FROM {s}.release($1, $2, $3)", (ids, attempts, now),
                lambda rows: b.ReleaseReply(tuple(rows[0][0]), tuple(rows[0][1])))


def _progress(cmd: b.ReportProgress, s: str, now: float | None) -> Plan:
    it = cmd.items
    return Plan(f"SELECT {s}.progress($1, $2, $3, $4)",
                ([i.job_id for i in it], [i.attempt for i in it],
                 [float(i.fraction) for i in it], [i.message for i in it]),
                lambda rows: b.ProgressReply(tuple(rows[0][0])))


def _get_decoder(ids: tuple[str, ...]) -> Callable[[Rows], b.GetJobsReply]:
    def decode(rows: Rows) -> b.GetJobsReply:
        found = {r[0]: record(r) for r in rows}
        return b.GetJobsReply(tuple(found.get(i) for i in ids))
    return decode


def _get(cmd: b.GetJobs, s: str, now: float | None) -> Plan:
    return Plan(f"SELECT {JOB_COLUMNS} FROM {s}.jobs WHERE id = ANY($1)", (list(set(cmd.ids)),),
                _get_decoder(cmd.ids))


def _watch(cmd: WatchRead, s: str, now: float | None) -> Plan:
    sql = f"SELECT {JOB_COLUMNS} FROM {s}.watch($1)"
    return Plan(sql, (list(set(cmd.ids)),), _get_decoder(cmd.ids))


def _page(rows: Rows, limit: int) -> tuple[tuple[JobRecord, ...], str | None]:
    jobs = tuple(record(r) for r in rows)
    return jobs, (jobs[-1].id if len(jobs) == limit else None)


def _list(cmd: b.ListJobs, s: str, now: float | None) -> Plan:
    sql = (f"SELECT {JOB_COLUMNS} FROM {s}.jobs WHERE ($1::text IS NULL OR queue = $1) "
           "AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR id > $3) "
           "AND ($5::text IS NULL OR task = $5) ORDER BY id LIMIT $4")
    return Plan(sql, (cmd.queue, cmd.state, cmd.after_id, cmd.limit, cmd.task),
                lambda rows: b.ListJobsReply(*_page(rows, cmd.limit)))


def _list_dead(cmd: b.ListDead, s: str, now: float | None) -> Plan:
    sql = (f"SELECT {JOB_COLUMNS} FROM {s}.jobs WHERE state = 'dead' "
           "AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR id > $2) "
           "ORDER BY id LIMIT $3")
    return Plan(sql, (cmd.queue, cmd.after_id, cmd.limit),
                lambda rows: b.ListDeadReply(*_page(rows, cmd.limit)))


def _count(cmd: b.CountJobs, s: str, now: float | None) -> Plan:
    return Plan(f"SELECT queue, state, n FROM {s}.count_jobs()", (),
                lambda rows: b.CountJobsReply(tuple(b.QueueCount(*r) for r in rows)))


def _cancel(cmd: b.CancelJobs, s: str, now: float | None) -> Plan:
    return Plan(f"SELECT {s}.cancel($1, $2)", (list(cmd.ids), now),
                lambda rows: b.CancelReply(tuple(rows[0][0])))


def _requeue(cmd: b.RequeueExpired, s: str, now: float | None) -> Plan:
    return Plan(f"SELECT requeued, dead, cancelled FROM {s}.requeue_expired($1, $2)",
                (cmd.limit, now),
                lambda rows: b.RequeueExpiredReply(*(tuple(v) for v in rows[0])))


def _scalar(sql: str, args: tuple[Any, ...], make: Callable[[Any], Any]) -> Plan:
    return Plan(sql, args, lambda rows: make(rows[0][0]))


def _targets(ids: tuple[str, ...] | None) -> list[str] | None:
    return None if ids is None else list(ids)


def _info(packed: bytes) -> dict[str, Any]:
    info: dict[str, Any] = msgpack.unpackb(packed, raw=False, use_list=False,
                                           strict_map_key=False)
    return info


def _nodes(cmd: b.ListNodes, s: str, now: float | None) -> Plan:
    sql = (f"SELECT node, info, first_seen, last_seen, expires_at FROM {s}.nodes "
           f"WHERE expires_at > {s}.clock($1) ORDER BY node")
    return Plan(sql, (now,), lambda rows: b.ListNodesReply(tuple(
        b.NodeInfo(r[0], _info(r[1]), r[2], r[3], r[4]) for r in rows)))


_Encoder = Callable[[Any, str, "float | None"], Plan]

_ENCODERS: dict[type, _Encoder] = {
    b.EnqueueJobs: _enqueue,
    b.LeaseJobs: _lease,
    b.Heartbeat: _heartbeat,
    b.AckJobs: _ack,
    b.NackJobs: _nack,
    b.ReleaseJobs: _release,
    b.ReportProgress: _progress,
    b.CancelJobs: _cancel,
    b.GetJobs: _get,
    WatchRead: _watch,
    b.ListJobs: _list,
    b.ListDead: _list_dead,
    b.CountJobs: _count,
    b.RequeueExpired: _requeue,
    b.PromoteDue: lambda c, s, now: _scalar(
        f"SELECT {s}.promote($1, $2)", (c.limit, now), b.PromoteDueReply),
    b.PurgeExpired: lambda c, s, now: _scalar(
        f"SELECT {s}.purge_expired($1, $2)", (c.limit, now), b.PurgeExpiredReply),
    b.RetryDead: lambda c, s, now: _scalar(
        f"SELECT {s}.retry_dead($1, $2)", (_targets(c.ids), now), b.RetryDeadReply),
    b.PurgeDead: lambda c, s, now: _scalar(
        f"SELECT {s}.purge_dead($1)", (_targets(c.ids),), b.PurgeDeadReply),
    b.ListNodes: _nodes,
    b.ExpireNodes: lambda c, s, now: _scalar(
        f"SELECT {s}.expire_nodes($1)", (now,), lambda v: b.ExpireNodesReply(tuple(v))),
}


def encode(cmd: object, schema: str, now: float | None, nodes_max: int = 10_000) -> Plan:
    """The SQL call for `cmd` in `schema` (already quoted) at storage time `now`.

    Raises:
        TypeError: `cmd` is not a storage command.
    """
    if isinstance(cmd, b.RegisterNode):
        return _scalar(f"SELECT {schema}.register_node($1, $2, $3, $4, $5)",
                       (cmd.node, msgpack.packb(cmd.info), float(cmd.ttl_s), nodes_max, now),
                       b.RegisterNodeReply)
    cron = CRON_ENCODERS.get(type(cmd)) or QUEUE_ENCODERS.get(type(cmd))  # issues 15, 16
    if cron is not None:
        return Plan(*cron(cmd, schema, now))
    encoder = _ENCODERS.get(type(cmd))
    if encoder is None:
        raise TypeError(f"not a storage command: {type(cmd).__name__}")
    return encoder(cmd, schema, now)


# -- merging a batch's commands ---------------------------------------------------------------

_MERGED = (b.EnqueueJobs, b.AckJobs)


def merge(cmds: list[Any]) -> list[tuple[list[int], Any]]:
    """Group adjacent enqueues (and adjacent acks) of a batch into one command each, so
    that fifty one-job enqueues cost one SQL call, not fifty. Answers are the same as
    one by one: the functions treat the items of one call in order.

    Returns (the indexes of the commands it stands for, the command) per SQL call.
    """
    groups: list[tuple[list[int], Any]] = []
    for i, cmd in enumerate(cmds):
        if groups and _joins(groups[-1][1], cmd):
            indexes, last = groups[-1]
            groups[-1] = ([*indexes, i], _join(last, cmd))
        else:
            groups.append(([i], cmd))
    return groups


def _joins(last: Any, cmd: Any) -> bool:
    return (type(last) is type(cmd) and isinstance(cmd, _MERGED)
            and len(_items(last)) + len(_items(cmd)) <= b.BATCH_MAX)


def _items(cmd: Any) -> tuple[Any, ...]:
    return cmd.jobs if isinstance(cmd, b.EnqueueJobs) else cmd.items  # type: ignore[no-any-return]


def _join(last: Any, cmd: Any) -> Any:
    if isinstance(cmd, b.EnqueueJobs):
        return b.EnqueueJobs(last.jobs + cmd.jobs)
    return b.AckJobs(last.items + cmd.items)


def split(cmds: list[Any], reply: Any) -> list[Any]:
    """The reply of each of `cmds` from the reply to their merged command."""
    if len(cmds) == 1 or isinstance(reply, Exception):
        return [reply] * len(cmds)
    out: list[Any] = []
    start = 0
    for cmd in cmds:
        end = start + len(_items(cmd))
        if isinstance(reply, b.EnqueueReply):
            out.append(b.EnqueueReply(reply.ids[start:end], reply.created[start:end]))
        else:
            out.append(b.AckReply(reply.statuses[start:end]))
        start = end
    return out
