"""How each storage command becomes a Lua script call, and how its answer becomes a reply.

Rules of this module:
- Pure functions: no IO, no clock. `encode(cmd)` gives the script name, its arguments
  (after the prefix and the clock, which the backend adds) and whether the command may
  be sent again when a connection broke with the outcome unknown. `decode(...)` turns
  the raw RESP answer (bytes, lists, ints, None) into the contract's reply.
- Every command may be resent except `LeaseJobs`: a lease sent twice would hold jobs
  nobody runs until their leases expire (counted as attempts). A resent `EnqueueJobs`
  answers created=True for the jobs its lost first attempt created (ids are unique).
- Arguments never carry None: '' stands for None where a value cannot be empty.
- `Leased` carries a lease's reply plus what a parked lease needs: the storage time and
  the next due time in its queues (None: nothing scheduled).
- A lease reply keeps to the shell's byte budget (`LEASE_REPLY_BYTES_MAX`), so it
  fits one wire frame; the lease script leaves the jobs past it queued, untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from gotask._job import AttemptRecord, JobRecord, attempt_error

from . import base as b
from ._backend import JOB_OVERHEAD_BYTES, LEASE_REPLY_BYTES_MAX, Leased, WatchRead
from ._history import history_from_json
from ._redis_cron import CRON_DECODERS, CRON_ENCODERS
from ._redis_queues import QUEUE_DECODERS, QUEUE_ENCODERS

__all__ = ["Leased", "Plan", "WatchRead", "decode", "encode", "record", "records"]

#: Most scheduled jobs one lease promotes per queue before leasing (the Scheduler
#: promotes the rest); bounds the time one lease script may take.
LEASE_PROMOTE_MAX = 10_000

_TEXT: dict[bytes, str] = {s.encode(): s for s in (
    "ok", "stale", "duplicate", "cancel", "missing", "scheduled", "queued", "active",
    "succeeded", "dead", "cancelled")}


@attrs.frozen
class Plan:
    """One script call for one command."""

    script: str
    args: list[Any]
    resend: bool = True


def _text(value: bytes) -> str:
    return _TEXT.get(value) or value.decode()


def _opt_float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _history(text: bytes | None) -> tuple[AttemptRecord, ...]:
    """A job hash's `history` (entries joined by newlines, `_redis_attempts`)."""
    return history_from_json(b"[" + text.replace(b"\n", b",") + b"]") if text else ()


def _opt_memo_float(memo: _Memo, value: bytes | None) -> float | None:
    return None if value is None else memo.float(value)


@attrs.define
class _Memo:
    """Conversions shared by the rows of one answer: a lease's rows repeat most values
    (task, queue, times, node), and a dict lookup is cheaper than a parse."""

    floats: dict[bytes, float] = attrs.Factory(dict)
    ints: dict[bytes, int] = attrs.Factory(dict)
    texts: dict[bytes, str] = attrs.Factory(dict)

    def float(self, value: bytes) -> float:
        found = self.floats.get(value)
        if found is None:
            found = self.floats[value] = float(value)
        return found

    def int(self, value: bytes) -> int:
        found = self.ints.get(value)
        if found is None:
            found = self.ints[value] = int(value)
        return found

    def text(self, value: bytes) -> str:
        found = self.texts.get(value)
        if found is None:
            found = self.texts[value] = value.decode()
        return found


def records(rows: list[list[bytes]]) -> tuple[JobRecord, ...]:
    """Job records from HGETALL answers (see `record`)."""
    memo = _Memo()
    return tuple(record(row, memo) for row in rows)


def leased_records(cmd: b.LeaseJobs, rows: list[list[bytes]], now: bytes) -> tuple[JobRecord, ...]:
    """The records a lease made, from the HGETALL rows it read before changing them.

    The script returns each job as it was and Python applies what the lease wrote
    (`active`, the next attempt, `leased_at = now`, `lease_expires_at = now + timeout`,
    `lease_node`), which spares Redis ten strings per job. Both sides add the same two
    doubles, so the expiry equals the one stored (written with `%.17g`, exact).
    """
    memo = _Memo()
    leased_at = memo.float(now)
    lease = (leased_at, leased_at + float(cmd.lease_timeout_s), cmd.node)
    return tuple(record(row, memo, lease) for row in rows)


def record(pairs: list[bytes], memo: _Memo | None = None,
           lease: tuple[float, float, str] | None = None) -> JobRecord:
    """A job record from a job hash's HGETALL pairs (a repeated field: the last wins);
    with `lease` (leased_at, lease_expires_at, node), as the lease that read them left it."""
    m = memo or _Memo()
    it = iter(pairs)
    get = dict(zip(it, it, strict=False)).get
    state, settled = get(b"state", b""), get(b"settled_attempt")
    if lease is None:
        attempt = m.int(get(b"attempt", b"0"))
        leased_at = _opt_memo_float(m, get(b"leased_at"))
        # Kept in Redis after an ack (one call less); it means something while active.
        lease_expires_at = (_opt_memo_float(m, get(b"lease_expires_at"))
                            if state == b"active" else None)
        lease_node = get(b"lease_node")
        node = None if lease_node is None else m.text(lease_node)
    else:
        state, attempt = b"active", m.int(get(b"attempt", b"0")) + 1
        leased_at, lease_expires_at, node = lease
    finished_at = get(b"finished_at")
    timeout_s, error_type, error = get(b"timeout_s"), get(b"error_type"), get(b"error")
    traceback, progress, message = get(b"traceback"), get(b"progress"), get(b"progress_message")
    key, expires_at = get(b"idempotency_key"), get(b"expires_at")
    return JobRecord(
        get(b"id", b"").decode(), m.text(get(b"task", b"")), m.text(get(b"queue", b"")),
        get(b"args", b""), m.int(get(b"priority", b"0")), _TEXT.get(state) or state.decode(),
        m.float(get(b"created_at", b"0")), m.float(get(b"due_at", b"0")),
        m.int(get(b"max_attempts", b"0")), m.float(get(b"result_ttl_s", b"0")),
        attempt, int(get(b"releases", 0)), int(get(b"attempt_base", 0)),
        0 if settled is None else int(settled), leased_at,
        None if finished_at is None else m.float(finished_at), lease_expires_at, node,
        None if timeout_s is None else float(timeout_s), get(b"result"),
        None if error_type is None else error_type.decode(),
        None if error is None else error.decode(),
        None if traceback is None else traceback.decode(),
        0.0 if progress is None else float(progress),
        "" if message is None else message.decode(),
        None if key is None else key.decode(), get(b"cancel_requested") == b"1",
        None if expires_at is None else m.float(expires_at),
        int(get(b"started_attempt", 0)), int(get(b"unstarted_expiries", 0)),
        _history(get(b"history")), int(get(b"history_dropped", 0)),
    )  # fmt: skip


# -- encoding ------------------------------------------------------------------------------


def _enqueue_args(cmd: b.EnqueueJobs) -> list[Any]:
    args: list[Any] = []
    for job in cmd.jobs:
        args += (job.id, job.task, job.queue, job.args, job.priority, float(job.delay_s),
                 job.max_attempts, "" if job.timeout_s is None else float(job.timeout_s),
                 float(job.result_ttl_s), job.idempotency_key or "")  # fmt: skip
    return args


def _lease_args(cmd: b.LeaseJobs) -> list[Any]:
    args: list[Any] = [cmd.node, cmd.limit, float(cmd.lease_timeout_s), LEASE_PROMOTE_MAX,
                       LEASE_REPLY_BYTES_MAX, JOB_OVERHEAD_BYTES]
    for queue in cmd.queues:
        args += (queue.name, queue.weight)
    return args


def _tokens(tokens: tuple[b.LeaseToken, ...]) -> list[Any]:
    return [v for t in tokens for v in (t.job_id, t.attempt)]


def _nack_args(cmd: b.NackJobs) -> list[Any]:
    return [v for i in cmd.items for v in (
        i.job_id, i.attempt, i.error_type, i.error, i.traceback,
        "" if i.retry_in_s is None else float(i.retry_in_s), i.outcome,
        attempt_error(i.error_type, i.error))]


def _targets(ids: tuple[str, ...] | None) -> list[Any]:
    return ["all"] if ids is None else ["ids", *ids]


def _register_args(cmd: b.RegisterNode, nodes_max: int) -> list[Any]:
    return [cmd.node, msgpack.packb(cmd.info), float(cmd.ttl_s), nodes_max]


_ENCODERS: dict[type, Callable[[Any], Plan]] = {
    b.EnqueueJobs: lambda c: Plan("enqueue", _enqueue_args(c)),
    b.LeaseJobs: lambda c: Plan("lease", _lease_args(c), resend=False),
    b.Heartbeat: lambda c: Plan("heartbeat", [float(c.lease_timeout_s), int(c.started),
                                              *_tokens(c.tokens)]),
    b.AckJobs: lambda c: Plan(
        "ack", [v for i in c.items for v in (i.job_id, i.attempt, i.result, i.queue or "")]),
    b.NackJobs: lambda c: Plan("nack", _nack_args(c)),
    b.ReleaseJobs: lambda c: Plan("release", _tokens(c.tokens)),
    b.ReportProgress: lambda c: Plan("progress", [
        v for i in c.items for v in (i.job_id, i.attempt, float(i.fraction), i.message)]),
    b.CancelJobs: lambda c: Plan("cancel", list(c.ids)),
    b.GetJobs: lambda c: Plan("get", ["", *c.ids]),
    WatchRead: lambda c: Plan("get", ["watch", *c.ids]),
    b.ListJobs: lambda c: Plan("list", [c.queue or "", c.state or "", c.limit,
                                        c.after_id or "", "ids", c.task or ""]),
    b.CountJobs: lambda c: Plan("count", []),
    b.RequeueExpired: lambda c: Plan("requeue", [c.limit]),
    b.PromoteDue: lambda c: Plan("promote", [c.limit]),
    b.PurgeExpired: lambda c: Plan("purge", [c.limit]),
    b.ListDead: lambda c: Plan("list", [c.queue or "", "dead", c.limit, c.after_id or "",
                                        "dead"]),
    b.RetryDead: lambda c: Plan("retry_dead", _targets(c.ids)),
    b.PurgeDead: lambda c: Plan("purge_dead", _targets(c.ids)),
    b.ListNodes: lambda c: Plan("list_nodes", []),
    b.ExpireNodes: lambda c: Plan("expire_nodes", []),
}
# -- cron (issue 15): every cron command may be resent (a repeated fire is "stale") --


def _cron_plan(enc: Callable[[Any], tuple[str, list[Any]]]) -> Callable[[Any], Plan]:
    return lambda c: Plan(*enc(c))


_ENCODERS.update({cls: _cron_plan(enc) for cls, enc in CRON_ENCODERS.items()})
_ENCODERS.update({cls: _cron_plan(enc) for cls, enc in QUEUE_ENCODERS.items()})  # issue 16


def encode(cmd: object, nodes_max: int = 10_000) -> Plan:
    """The script call for `cmd`.

    Raises:
        TypeError: `cmd` is not a storage command.
    """
    if isinstance(cmd, b.RegisterNode):
        return Plan("register_node", _register_args(cmd, nodes_max))
    encoder = _ENCODERS.get(type(cmd))
    if encoder is None:
        raise TypeError(f"not a storage command: {type(cmd).__name__}")
    return encoder(cmd)


# -- decoding ------------------------------------------------------------------------------


def _enqueue_reply(cmd: b.EnqueueJobs, raw: list[Any], resent: bool) -> b.EnqueueReply:
    ids = tuple(v.decode() for v in raw[0])
    if resent:  # a lost first attempt may have created them: ids are unique
        return b.EnqueueReply(ids, tuple(i == j.id for i, j in zip(ids, cmd.jobs, strict=True)))
    return b.EnqueueReply(ids, tuple(v == 1 for v in raw[1]))


def _page(rows: list[Any], limit: int) -> tuple[tuple[JobRecord, ...], str | None]:
    jobs = sorted(records(rows), key=lambda j: j.id)[:limit]
    return tuple(jobs), (jobs[-1].id if len(jobs) == limit else None)


def _maybe_records(rows: list[Any]) -> tuple[JobRecord | None, ...]:
    memo = _Memo()
    return tuple(None if row is None else record(row, memo) for row in rows)


def _counts(raw: list[Any]) -> b.CountJobsReply:
    counts = []
    for i in range(0, len(raw), 2):
        pairs = raw[i + 1]
        for k in range(0, len(pairs), 2):
            if int(pairs[k + 1]):
                counts.append(b.QueueCount(raw[i].decode(), pairs[k].decode(), int(pairs[k + 1])))
    return b.CountJobsReply(tuple(sorted(counts, key=lambda c: (c.queue, c.state))))


def _nodes(raw: list[Any]) -> b.ListNodesReply:
    now = float(raw[0])
    nodes = [
        b.NodeInfo(name.decode(), _info(info), float(first), float(last), float(exp))
        for name, info, first, last, exp in raw[1:]
        if float(exp) > now
    ]
    return b.ListNodesReply(tuple(sorted(nodes, key=lambda n: n.node)))


def _info(packed: bytes | None) -> dict[str, Any]:
    if packed is None:
        return {}
    info: dict[str, Any] = msgpack.unpackb(packed, raw=False, use_list=False,
                                           strict_map_key=False)
    return info


def _fenced(raw: list[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(_text(s) for s in raw[0]), tuple(_text(s) for s in raw[1])


_DECODERS: dict[str, Callable[[Any, Any], Any]] = {
    "lease": lambda c, r: Leased(b.LeaseReply(leased_records(c, r[0], r[2])), float(r[2]),
                                 _opt_float(r[1])),
    "heartbeat": lambda c, r: b.HeartbeatReply(tuple(_text(s) for s in r[0]), float(r[1])),
    "ack": lambda c, r: b.AckReply(tuple(_text(s) for s in r)),
    "nack": lambda c, r: b.NackReply(*_fenced(r)),
    "release": lambda c, r: b.ReleaseReply(*_fenced(r)),
    "progress": lambda c, r: b.ProgressReply(tuple(v == 1 for v in r)),
    "cancel": lambda c, r: b.CancelReply(tuple(_text(s) for s in r)),
    "get": lambda c, r: b.GetJobsReply(_maybe_records(r)),
    "count": lambda c, r: _counts(r),
    "requeue": lambda c, r: b.RequeueExpiredReply(*(tuple(v.decode() for v in part)
                                                    for part in r)),
    "promote": lambda c, r: b.PromoteDueReply(int(r)),
    "purge": lambda c, r: b.PurgeExpiredReply(int(r)),
    "retry_dead": lambda c, r: b.RetryDeadReply(int(r)),
    "purge_dead": lambda c, r: b.PurgeDeadReply(int(r)),
    "register_node": lambda c, r: b.RegisterNodeReply(float(r)),
    "list_nodes": lambda c, r: _nodes(r),
    "expire_nodes": lambda c, r: b.ExpireNodesReply(tuple(sorted(v.decode() for v in r))),
    **CRON_DECODERS,
    **QUEUE_DECODERS,
}


def decode(cmd: Any, plan: Plan, raw: Any, resent: bool) -> Any:
    """The reply to `cmd` from its script's raw answer (`Leased` for a lease).

    `resent` is True when the command was sent again after a broken connection.
    """
    if plan.script == "enqueue":
        return _enqueue_reply(cmd, raw, resent)
    if plan.script == "list":
        jobs, next_after = _page(raw, cmd.limit)
        reply_cls = b.ListDeadReply if isinstance(cmd, b.ListDead) else b.ListJobsReply
        return reply_cls(jobs, next_after)
    return _DECODERS[plan.script](cmd, raw)
