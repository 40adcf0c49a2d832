"""JSON shapes of the REST API: jobs, pages, queues, nodes, and values out of msgpack.

Rules of this module:
- Pure: plain data in, JSON-ready data out; no IO, no clock.
- A job's `args`/`result` are msgpack on the wire and in storage; here they become JSON
  where representable. Bytes become `{"$base64": "..."}`, map keys that are not strings
  become their `str()`, and a payload that is not msgpack (never written by GoTask) is
  returned as `{"$base64": ...}` of the raw bytes.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import msgpack

from gotask._app import unpack_args
from gotask._job import AttemptRecord, JobRecord
from gotask._protocol import NodeInfo, QueuesReply

__all__ = ["attempt_json", "job_json", "jsonable", "nodes_json", "queues_json"]


def jsonable(value: Any) -> Any:
    """`value` (as msgpack decodes) with bytes, odd keys and non-finite floats made JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # msgpack ExtType and the like


def _result(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return jsonable(msgpack.unpackb(data, strict_map_key=False))
    except (ValueError, msgpack.UnpackException):
        return jsonable(data)


def _args(data: bytes) -> tuple[Any, Any]:
    try:
        args, kwargs = unpack_args(data)
    except (TypeError, ValueError):
        return jsonable(data), {}
    return jsonable(args), jsonable(kwargs)


def job_json(job: JobRecord) -> dict[str, Any]:
    """One job as the API shows it (times are seconds on the storage's clock)."""
    args, kwargs = _args(job.args)
    return {
        "id": job.id, "task": job.task, "queue": job.queue, "state": job.state,
        "priority": job.priority, "args": args, "kwargs": kwargs,
        "created_at": job.created_at, "due_at": job.due_at,
        "max_attempts": job.max_attempts, "attempts": job.attempts_counted,
        "timeout_s": job.timeout_s, "result_ttl_s": job.result_ttl_s,
        "leased_at": job.leased_at, "finished_at": job.finished_at,
        "lease_node": job.lease_node, "result": _result(job.result),
        "error_type": job.error_type, "error": job.error, "traceback": job.traceback,
        "progress": job.progress, "progress_message": job.progress_message,
        "idempotency_key": job.idempotency_key, "cancel_requested": job.cancel_requested,
        "expires_at": job.expires_at,
        "history": [attempt_json(a) for a in job.history],
        "history_dropped": job.history_dropped,
    }


def attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    """One finished attempt of a job (times are seconds on the storage's clock)."""
    return {"attempt": attempt.attempt, "node": attempt.node, "leased_at": attempt.leased_at,
            "ended_at": attempt.ended_at, "outcome": attempt.outcome, "error": attempt.error}


def queues_json(reply: QueuesReply) -> list[dict[str, Any]]:
    """Every queue with jobs or paused, sorted by name: `[{"name": q, "counts": {state:
    n}, "paused": bool, "oldest_ready_age_s": seconds or None}]`."""
    out: dict[str, dict[str, int]] = {name: {} for name in reply.paused}
    for c in reply.counts:
        out.setdefault(c.queue, {})[c.state] = c.count
    paused = set(reply.paused)
    ages = {a.queue: a.age_s for a in reply.oldest_ready}
    return [{"name": q, "counts": s, "paused": q in paused, "oldest_ready_age_s": ages.get(q)}
            for q, s in sorted(out.items())]


def nodes_json(nodes: tuple[NodeInfo, ...]) -> list[dict[str, Any]]:
    """Live nodes with what each announced about itself."""
    return [{"node": n.node, "info": jsonable(n.info), "first_seen": n.first_seen,
             "last_seen": n.last_seen, "expires_at": n.expires_at} for n in nodes]
