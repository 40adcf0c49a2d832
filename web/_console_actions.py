"""The console's state-changing routes: plain HTML form POSTs that redirect back.

Rules of this module:
- Each route sends one request of `gotask._protocol` through `call`; the console's guard
  (`console._guard`) has already checked the login and the CSRF token.
- Queue pause and resume are `PauseQueue` (cluster-wide, stored).
- Pages ask for a confirmation (`data-confirm`, in console.js) before the destructive
  ones: retry one, retry all, purge one, purge all.
- The outcome is flashed on the page the user came back to.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, flash, redirect, url_for

from gotask._protocol import CancelJobs, PauseCron, PauseQueue, PurgeDead, RetryDead, RunCron
from gotask.web.api import Call

__all__ = ["action_routes"]


def action_routes(bp: Blueprint, call: Call) -> None:
    """Add the DLQ, job, queue and cron actions to the console's blueprint."""
    _dlq_actions(bp, call)
    _cron_actions(bp, call)
    _pause_actions(bp, call)

    @bp.post("/jobs/<job_id>/cancel")
    async def cancel_job(job_id: str) -> Any:
        state = (await call(CancelJobs((job_id,)))).states[0]
        await flash(f"job {job_id}: {state}")
        return redirect(url_for("console.job", job_id=job_id))


def _dlq_actions(bp: Blueprint, call: Call) -> None:
    @bp.post("/dlq/retry")
    async def retry_all() -> Any:
        return await _moved("retried", (await call(RetryDead(None))).count, "console.dlq")

    @bp.post("/dlq/purge")
    async def purge_all() -> Any:
        return await _moved("purged", (await call(PurgeDead(None))).count, "console.dlq")

    @bp.post("/dlq/<job_id>/retry")
    async def retry_one(job_id: str) -> Any:
        count = (await call(RetryDead((job_id,)))).count
        return await _moved("retried", count, "console.job", job_id=job_id)

    @bp.post("/dlq/<job_id>/purge")
    async def purge_one(job_id: str) -> Any:
        return await _moved("purged", (await call(PurgeDead((job_id,)))).count, "console.dlq")


def _pause_actions(bp: Blueprint, call: Call) -> None:
    @bp.post("/<any(queues, cron):kind>/<name>/<any(pause, resume):action>")
    async def pause(kind: str, name: str, action: str) -> Any:
        paused = action == "pause"
        await call(PauseQueue(name, paused) if kind == "queues" else PauseCron(name, paused))
        await flash(f"{'queue' if kind == 'queues' else 'cron entry'} {name} {action}d")
        return redirect(url_for(f"console.{kind}"))


def _cron_actions(bp: Blueprint, call: Call) -> None:
    @bp.post("/cron/<name>/run")
    async def run_cron(name: str) -> Any:
        job_id = (await call(RunCron(name))).job_id
        return redirect(url_for("console.job", job_id=job_id))


async def _moved(verb: str, count: int, endpoint: str, **values: Any) -> Any:
    await flash(f"{count} dead job{'s' if count != 1 else ''} {verb}")
    return redirect(url_for(endpoint, **values))
