"""The checks made once a run is over: loss, phantoms, liveness, duplicate executions.

Rules of this module:
- It reads the checker's replayed model and the run's final storage snapshot; it adds
  violations through `checker.fail`, duplicate classifications through `checker.dup`.
- A node that failed by itself, or a production log record of level ERROR (an actor
  crash, a rejected outcome), is a violation: none is expected under these faults.
- A duplicate execution is a run of a job after a run of an earlier attempt whose lease
  was not closed by an accepted failure (a retry is not a duplicate). It is explained
  by how that earlier lease ended: released by a drain, or expired while a fault window
  (crash, partition, stall, message loss) touched its holder. Anything else is a
  violation.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TYPE_CHECKING

from .clients import OpState
from .model import TERMINAL, Exec, JobModel, Lease

if TYPE_CHECKING:
    from .invariants import _Checker

__all__ = ["final_checks"]

#: Fault windows that explain an expired lease, and the name the duplicate gets.
EXPLAINS = {"crash": "worker loss", "partition": "partition", "isolate": "partition",
            "stall": "stalled worker", "loss": "message loss"}


def final_checks(checker: _Checker) -> None:
    """Run every end-of-run check."""
    _check_ops(checker)
    _check_jobs(checker)
    result = checker.result
    if result.drained_at is None:
        checker.fail(None, None, f"liveness: jobs still live at the bound "
                                 f"t={result.bound_at:.1f} (quiet at {result.quiet_at:.1f})")
    for text in result.failures:
        checker.fail(None, None, text)
    for line in checker.log_errors:
        checker.fail(None, None, f"production logged an error: {line.strip()}")
    for job in checker.jobs.values():
        _classify_duplicates(checker, job)
    if checker.cron is not None:
        checker.cron.finish(result, result.history.events)


def _check_ops(checker: _Checker) -> None:
    by_op: dict[str | None, list[JobModel]] = defaultdict(list)
    for job in checker.jobs.values():
        by_op[job.op].append(job)
    known = {state.op.op_id for state in checker.result.ops}
    fired = checker.cron.jobs if checker.cron is not None else set()
    for job in checker.jobs.values():
        if job.op not in known and job.id not in fired:
            checker.fail(None, job.id, "stored but neither a client nor a cron fire asked "
                                       "for it (phantom)")
    for state in checker.result.ops:
        _check_op(checker, state, by_op.get(state.op.op_id, []))


def _check_op(checker: _Checker, state: OpState, jobs: list[JobModel]) -> None:
    op, tries = state.op.op_id, state.tries
    for job in jobs:
        if job.args != state.op.args:
            checker.fail(None, job.id, f"op {op}: stored arguments differ from those sent")
    answers = checker.enqueues.get(op, [])
    acked = {a.job_id for a in answers if a.outcome == "ok" and a.job_id is not None}
    if len(acked) > 1:
        checker.fail(None, None, f"op {op} acknowledged with different jobs {sorted(acked)}")
    for job_id in acked:
        if job_id not in checker.jobs:
            checker.fail(None, job_id, f"op {op} acknowledged but never stored (loss)")
    if len(jobs) > 1:
        checker.fail(None, jobs[0].id, f"op {op} stored {len(jobs)} jobs (one per enqueue, "
                                       "one per idempotency key)")
    refused = bool(answers) and len(answers) == tries and all(
        a.outcome == "failed" for a in answers)
    if refused and jobs:
        checker.fail(None, jobs[0].id, f"op {op} was refused yet stored (phantom)")


def _check_jobs(checker: _Checker) -> None:
    final = checker.result.final
    for job in checker.jobs.values():
        record = final.get(job.id)
        if job.state not in TERMINAL:
            checker.fail(None, job.id, f"still {job.state} at the end (liveness)")
        elif len(job.terminal) != 1:
            checker.fail(None, job.id, f"entered terminal states {job.terminal}, not one")
        if record is None:
            checker.fail(None, job.id, "missing from storage at the end (loss)")
        elif (record.state, record.attempt) != (job.state, job.attempt):
            checker.fail(None, job.id, f"storage holds {record.state} attempt "
                                       f"{record.attempt}; the history says {job.state} "
                                       f"attempt {job.attempt}")


def _classify_duplicates(checker: _Checker, job: JobModel) -> None:
    # By attempt, not start time: a zombie may start a prefetched stale lease after a
    # newer attempt ran; what explains it is how that older lease ended.
    runs = sorted(job.execs, key=lambda run: (run.attempt, run.started))
    for before, run in itertools.pairwise(runs):
        lease = job.leases.get(before.attempt)
        if lease is not None and lease.closed_by == "nack":
            continue
        reason = _explain(checker, lease)
        if reason is None:
            checker.fail(None, job.id, _unexplained(before, run, lease))
        else:
            checker.dup(reason)


def _explain(checker: _Checker, lease: Lease | None) -> str | None:
    if lease is None:
        return None
    if lease.closed_by == "release":
        return "drain"
    if lease.closed_by != "expired" or lease.closed_at is None:
        return None
    end = lease.closed_at
    for window in checker.result.windows:
        touches = window.node in (None, lease.holder)
        if touches and window.kind in EXPLAINS and window.start <= end and \
                window.end >= lease.granted:
            return EXPLAINS[window.kind]
    return None


def _unexplained(before: Exec, run: Exec, lease: Lease | None) -> str:
    how = lease.closed_by if lease is not None else "no lease"
    holder = lease.holder if lease is not None else "-"
    return (f"unexplained duplicate execution: attempt {run.attempt} on {run.node} at "
            f"t={run.started:.3f} after attempt {before.attempt} on {holder} "
            f"(its lease ended: {how}) with no fault on {holder} during that lease")
