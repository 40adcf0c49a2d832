"""One log line per job event, at INFO on the "gotask.jobs" logger.

Rules of this module:
- Every line names the job id, task, queue and attempt, in its text and as `extra`
  fields (`job_id`, `task`, `queue`, `attempt`, `event`) for structured formatters.
- A line never carries the job's arguments or result; a failure carries the error's
  type and text only (its traceback is stored on the job, not logged).
- Callers check `enabled()` first, so a node logging at WARNING pays nothing per job.
"""

from __future__ import annotations

import logging
from typing import Any

from gotask._job import JobRecord

from ._worker_outcomes import settled_outcome
from .storage.base import AckItem, NackItem

__all__ = ["enabled", "job_event", "settled", "started"]

log = logging.getLogger("gotask.jobs")


def enabled() -> bool:
    """Whether job lines are logged at all (the level allows INFO)."""
    return log.isEnabledFor(logging.INFO)


def job_event(event: str, job_id: str, task: str | None, queue: str | None,
              attempt: int | None, detail: str = "", **fields: Any) -> None:
    """Log one job event: `job <id> <event>[: detail] (task=.. queue=.. attempt=..)`."""
    where = f"task={task} queue={queue} attempt={attempt}" if task is not None \
        else f"attempt={attempt}"
    text = f"job {job_id} {event}{': ' + detail if detail else ''} ({where})"
    log.info(text, extra={"event": event, "job_id": job_id, "task": task, "queue": queue,
                          "attempt": attempt, **fields})


def started(record: JobRecord) -> None:
    """A worker started an attempt of `record`."""
    job_event("started", record.id, record.task, record.queue, record.attempt)


def settled(record: JobRecord, item: AckItem | NackItem | None, duration_s: float) -> None:
    """An attempt of `record` ended with `item` (None: stale or released, logged elsewhere)."""
    args = (record.id, record.task, record.queue, record.attempt)
    took = round(duration_s, 6)
    outcome = settled_outcome(record, item)
    if isinstance(item, AckItem):
        job_event("succeeded", *args, f"in {duration_s:.3f}s", duration_s=took)
    elif isinstance(item, NackItem):
        error = f"{item.error_type}: {item.error}"
        if outcome == "retried":
            job_event("failed, retrying", *args, f"{error}; retry in {item.retry_in_s or 0.0:.3f}s",
                      duration_s=took, error=error, retry_in_s=item.retry_in_s or 0.0)
        elif outcome == "dead":
            job_event("failed, dead", *args, f"{error}; moved to the dead-letter queue",
                      duration_s=took, error=error)
        else:
            job_event("cancelled", *args, duration_s=took)
