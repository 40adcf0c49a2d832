"""What the CLI prints: tables, job details, JSON, the live progress bar.

Rules of this module:
- Formatting is pure (values in, text out); only the `emit_*`/`Progress` functions
  write, to the stream they are given. Errors go to stderr as one line.
- JSON output is plain JSON: msgpack arguments and results are decoded; bytes inside
  them become ``"base64:<data>"`` strings; times are seconds since the epoch. A float
  that JSON cannot hold (NaN, ±Infinity) becomes the string ``"NaN"``, ``"Infinity"`` or
  ``"-Infinity"``, so the output is always strict JSON.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import attrs
import msgpack

from gotask._app import unpack_args
from gotask._client_admin import QueueStatus
from gotask._errors import InvalidArguments
from gotask._job import JobRecord
from gotask._protocol import CronEntryInfo, NodeInfo

__all__ = [
    "STATE_COLUMNS",
    "Progress",
    "dead_table",
    "format_job",
    "format_table",
    "job_json",
    "jobs_table",
    "jsonable",
    "node_json",
    "nodes_table",
    "outcome_line",
    "queue_json",
    "queue_workers",
    "queues_table",
    "to_json",
    "unserved",
    "unserved_line",
]

#: Columns of `gotask queues`, in the order a job moves through them.
STATE_COLUMNS = ("scheduled", "queued", "active", "succeeded", "dead", "cancelled")
_BAR_CHARS = 30


def jsonable(value: Any) -> Any:
    """Turn a decoded msgpack value into one `json.dumps` accepts."""
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity", "-Infinity": as strings
    return value


def to_json(value: Any) -> str:
    """One line of strict JSON (no NaN or Infinity literals)."""
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def _decoded_result(job: JobRecord) -> Any:
    return None if job.result is None else msgpack.unpackb(job.result, strict_map_key=False)


def job_json(job: JobRecord) -> dict[str, Any]:
    """A job as a JSON object: every field, with `args`/`kwargs`/`result` decoded."""
    out = attrs.asdict(job)
    try:
        out["args"], out["kwargs"] = unpack_args(job.args)
    except InvalidArguments:
        out["kwargs"] = None
    out["result"] = _decoded_result(job)
    return out


def node_json(node: NodeInfo) -> dict[str, Any]:
    """A live node as a JSON object."""
    return attrs.asdict(node)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_job(job: JobRecord) -> str:
    """Job details, one "name: value" line each, for `gotask job`."""
    args = to_json(job_json(job)["args"])
    kwargs = to_json(job_json(job)["kwargs"])
    rows = [
        ("id", job.id), ("task", job.task), ("queue", job.queue), ("state", job.state),
        ("priority", str(job.priority)), ("args", args), ("kwargs", kwargs),
        ("attempts", f"{job.attempts_counted} of {job.max_attempts}"),
        ("progress", f"{job.progress:.0%} {job.progress_message}".rstrip()),
        ("created", _when(job.created_at)), ("due", _when(job.due_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.result is not None:
        rows.append(("result", to_json(_decoded_result(job))))
    if job.error_type is not None:
        rows.append(("error", f"{job.error_type}: {job.error}"))
    if job.cancel_requested and not job.is_terminal:
        rows.append(("cancel", "requested"))
    lines = [f"{name + ':':<10} {value}" for name, value in rows]
    return "\n".join(lines + _history_lines(job))


def _history_lines(job: JobRecord) -> list[str]:
    """The job's attempts, one line each (its running attempt last), under "history:"."""
    rows = [[f"#{a.attempt}", _when(a.leased_at), a.node or "-", a.outcome,
             f"{a.ended_at - a.leased_at:.1f}s" if a.leased_at is not None else "-",
             _short(a.error or "", 60)] for a in job.history]
    if job.state == "active":
        rows.append([f"#{job.attempt}", _when(job.leased_at), job.lease_node or "-",
                     "running", "-", ""])
    if not rows:
        return []
    older = f" ({job.history_dropped} older not kept)" if job.history_dropped else ""
    table = format_table(["attempt", "leased", "node", "outcome", "took", "error"], rows)
    return [f"history:{older}", *("  " + line for line in table.splitlines())]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric,
                                                                          strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def queues_table(queues: Sequence[QueueStatus], workers: Mapping[str, int]) -> str:
    """`gotask queues`: one row per queue, one column per state, a total, the live nodes
    working it (`workers`), whether it is paused, and its oldest ready job's age."""
    header = ["QUEUE", *(s.upper() for s in STATE_COLUMNS), "TOTAL", "NODES", "PAUSED",
              "OLDEST"]
    rows = [[q.name, *(q.counts.get(s, 0) for s in STATE_COLUMNS), sum(q.counts.values()),
             workers.get(q.name, 0), "yes" if q.paused else "no",
             "-" if q.oldest_ready_age_s is None else f"{q.oldest_ready_age_s:.1f}s"]
            for q in queues]
    return format_table(header, rows)


def queue_json(queue: QueueStatus) -> dict[str, Any]:
    """A queue as `gotask queues --json` prints it (the REST API's shape)."""
    return {"name": queue.name, "counts": queue.counts, "paused": queue.paused,
            "oldest_ready_age_s": queue.oldest_ready_age_s}


def unserved(counts: Mapping[str, Mapping[str, int]], workers: Mapping[str, int]) -> list[str]:
    """Queues whose jobs wait (queued or scheduled) with no live node working them."""
    return [q for q, c in sorted(counts.items())
            if not workers.get(q) and c.get("queued", 0) + c.get("scheduled", 0)]


def queue_workers(nodes: Sequence[NodeInfo]) -> dict[str, int]:
    """How many live nodes work each queue (from what each node reports about itself)."""
    out: dict[str, int] = {}
    for node in nodes:
        queues = node.info.get("queues")
        for spec in queues if isinstance(queues, list | tuple) else ():
            name = str(spec).rsplit(":", 1)[0]  # "emails:3": the queue and its weight
            out[name] = out.get(name, 0) + 1
    return out


def unserved_line(queue: str) -> str:
    """The warning for jobs in a queue that no live node works."""
    return (f"gotask: warning: no live node works queue {queue!r}; its jobs wait until one "
            f"does (gotask node --queues {queue},...)")


def jobs_table(jobs: Sequence[JobRecord]) -> str:
    """`gotask jobs`: one row per job."""
    rows = [[j.id, j.task, j.queue, j.state, j.attempts_counted, _when(j.created_at)]
            for j in jobs]
    return format_table(["ID", "TASK", "QUEUE", "STATE", "ATTEMPTS", "CREATED"], rows)


def dead_table(jobs: Sequence[JobRecord]) -> str:
    """`gotask dlq list`: one row per dead job."""
    header = ["ID", "TASK", "QUEUE", "ATTEMPTS", "FINISHED", "ERROR"]
    rows = [[j.id, j.task, j.queue, j.attempts_counted, _when(j.finished_at),
             _short(f"{j.error_type}: {j.error}" if j.error_type else "-", 60)] for j in jobs]
    return format_table(header, rows)


def nodes_table(nodes: Sequence[NodeInfo]) -> str:
    """`gotask nodes`: one row per live node."""
    rows = [[n.node, _when(n.first_seen), _when(n.last_seen),
             _short(" ".join(f"{k}={to_json(v)}" for k, v in sorted(n.info.items())), 80)]
            for n in nodes]
    return format_table(["NODE", "SINCE", "LAST SEEN", "INFO"], rows)


def cron_json(entry: CronEntryInfo) -> dict[str, Any]:
    """`gotask cron list --json`: one entry's fields."""
    return attrs.asdict(entry)


def cron_table(entries: Sequence[CronEntryInfo]) -> str:
    """`gotask cron list`: one row per stored entry."""
    rows = []
    for e in entries:
        when = e.schedule if e.schedule is not None else (
            f"every {e.every_s}s" if e.every_s is not None else "(not in this app)")
        status = "paused" if e.paused else ("stale" if not e.current else "active")
        rows.append([e.name, when, e.zone or "-",
                     _when(e.next_tick) if e.next_tick is not None else "-",
                     _when(e.last_tick), e.last_job_state or "-", status])
    return format_table(["NAME", "SCHEDULE", "ZONE", "NEXT", "LAST TICK", "LAST JOB",
                         "STATUS"], rows)


def outcome_line(job: JobRecord) -> str:
    """How a terminal job ended, in one line: the result's JSON, or what went wrong."""
    if job.state == "succeeded":
        return to_json(_decoded_result(job))
    if job.state == "cancelled":
        return f"job {job.id} ({job.task}) was cancelled"
    why = f"{job.error_type}: {job.error}" if job.error_type else "no error recorded"
    return f"job {job.id} ({job.task}) is dead after {job.attempts_counted} attempt(s): {why}"


def _status(job: JobRecord) -> str:
    return f"{job.state} {job.progress:.0%} {job.progress_message}".rstrip()


@attrs.define
class Progress:
    """Shows a job's changes: a bar redrawn in place on a terminal, else one line each."""

    stream: TextIO
    tty: bool
    _drawn: bool = False

    def show(self, job: JobRecord) -> None:
        """Draw the job's newest state."""
        if not self.tty:
            print(f"{job.id} {_status(job)}", file=self.stream, flush=True)
            return
        filled = round(job.progress * _BAR_CHARS)
        bar = "#" * filled + "-" * (_BAR_CHARS - filled)
        line = _short(f"{job.id} [{bar}] {_status(job)}", 100)
        print(f"\r\x1b[2K{line}", end="", file=self.stream, flush=True)
        self._drawn = True

    def finish(self) -> None:
        """End the bar's line, if one was drawn."""
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False
