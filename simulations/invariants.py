"""The invariant checker: judges one run's history against the job lifecycle guarantees.

Rules of this module:
- `check(result)` replays the history through the model (`simulations.model`) and
  returns a `Report`. A violation is a sentence naming the job, the time and the rule;
  any violation fails the run.
- Checked while replaying: no phantoms (every lease, execution and completion is of a
  stored job, every stored job of an op a client asked for); no overlapping leases; no
  lease after a terminal state (so none after an accepted completion) or after a
  cancellation request; attempts +1 per lease; nothing leased before it is due; every
  fenced answer (heartbeat, ack, nack, release) is the one the contract gives for the
  token, so stale tokens are rejected and repeats answered "duplicate"; at most one
  accepted completion per job, and only for an execution that finished; DLQ exactly when
  attempts are exhausted; arguments byte-identical at every execution; one job per
  idempotency key; no lease expires before its time (storage clock).
- Checked at the end: no loss (every acknowledged enqueue names a stored job that ended
  in exactly one terminal state, the one storage holds); a refused enqueue stored
  nothing; one enqueue without a key stored at most one job; liveness (every job
  terminal by the computed bound); no node failed by itself and production logged no
  error.
- Duplicate executions are counted and each classified by how the earlier execution's
  lease ended and which fault windows overlap it; one no fault explains is a violation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from .cron_check import CronModel
from .harness import RunResult
from .history import (
    Acked,
    Beat,
    Cancelled,
    CronFired,
    CronRegistered,
    EnqueueDone,
    Event,
    ExecEnded,
    ExecStarted,
    Expired,
    History,
    Leased,
    LogLine,
    Nacked,
    Released,
    Stored,
    short,
)
from .model import TERMINAL, Exec, JobModel, Lease, op_of
from .verdict import final_checks
from .workload import TaskEnv, make_app

__all__ = ["Report", "check"]

EPS = 1e-6


@attrs.frozen
class Report:
    """The verdict on one run."""

    violations: tuple[str, ...]
    duplicates: dict[str, int]
    jobs: int
    executions: int
    outcomes: dict[str, int]
    log_errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no invariant was violated."""
        return not self.violations


def check(result: RunResult) -> Report:
    """Judge one run; see the module docstring for the rules."""
    checker = _Checker(result)
    env = TaskEnv("checker", 0, History(), lambda _name: None)
    entries = {e.name: e for e in make_app(env, result.spec.cron).cron_entries()}
    checker.cron = CronModel(entries, checker.fail_event)
    for event in result.history.events:
        checker.apply(event)
    checker.finish()
    jobs = checker.jobs.values()
    return Report(
        violations=tuple(checker.violations), duplicates=dict(sorted(checker.dups.items())),
        jobs=len(checker.jobs), executions=sum(len(j.execs) for j in jobs),
        outcomes=dict(sorted(Counter(j.state for j in jobs).items())),
        log_errors=tuple(checker.log_errors),
    )


@attrs.define
class _Checker:
    result: RunResult
    jobs: dict[str, JobModel] = attrs.Factory(dict)
    keys: dict[str, str] = attrs.Factory(dict)
    enqueues: dict[str, list[EnqueueDone]] = attrs.Factory(dict)
    violations: list[str] = attrs.Factory(list)
    dups: Counter[str] = attrs.Factory(Counter)
    log_errors: list[str] = attrs.Factory(list)
    cron: CronModel | None = None

    def fail_event(self, event: Event | None, text: str) -> None:
        at = f"t={event.time:.6f} " if event is not None else ""
        self.violations.append(f"{at}{text}")

    def fail(self, event: Event | None, job_id: str | None, text: str) -> None:
        at = f"t={event.time:.6f} " if event is not None else ""
        self.violations.append(f"{at}job {short(job_id)}: {text}")

    def apply(self, event: Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # -- storage events ----------------------------------------------------------------

    def stored(self, ev: Stored) -> None:
        known = self.keys.get(ev.key) if ev.key is not None else None
        if not ev.created:
            if ev.job_id not in self.jobs or known not in (None, ev.job_id):
                self.fail(ev, ev.job_id, f"a repeat enqueue (key {ev.key}) was answered "
                                         f"with a job the key does not name ({known})")
            return
        if ev.job_id in self.jobs or known is not None:
            self.fail(ev, ev.job_id, f"stored twice, or a second job for key {ev.key}")
        state = "scheduled" if ev.due_at > ev.now else "queued"
        self.jobs[ev.job_id] = JobModel(ev.job_id, ev.key, ev.args, op_of(ev.args),
                                        ev.max_attempts, ev.due_at, state)
        if ev.key is not None:
            self.keys[ev.key] = ev.job_id

    def leased(self, ev: Leased) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None:
            self.fail(ev, ev.job_id, "leased but never stored (phantom)")
            return
        for broken, text in _lease_rules(job, ev):
            if broken:
                self.fail(ev, job.id, text)
        job.close("overlapped", ev.time)
        job.open = job.leases[ev.attempt] = Lease(ev.attempt, ev.holder, ev.time, ev.expires_at)
        job.move("active")

    def beat(self, ev: Beat) -> None:
        job = self.jobs.get(ev.job_id)
        current = job is not None and job.current(ev.attempt)
        accepted = ev.status in ("ok", "cancel")
        if accepted and not current:
            self.fail(ev, ev.job_id, f"heartbeat of stale token attempt {ev.attempt} accepted")
        elif current and not accepted:
            self.fail(ev, ev.job_id, f"heartbeat of the current lease answered {ev.status}")
        elif current and job is not None and job.open is not None:
            job.open.expires_at = ev.expires_at
            job.open.start_stored = job.open.start_stored or ev.started
            if (ev.status == "cancel") != job.cancel_requested:
                self.fail(ev, job.id, f"heartbeat answered {ev.status} but cancellation "
                                      f"requested={job.cancel_requested}")

    def fenced(self, ev: Acked | Nacked | Released, what: str) -> JobModel | None:
        """Check the answer to a fenced command; return the job when it was applied."""
        job = self.jobs.get(ev.job_id)
        allowed = job.expected_status(ev.attempt) if job is not None else frozenset({"stale"})
        if ev.status not in allowed:
            stale = "a stale" if ev.status == "ok" else "the"
            self.fail(ev, ev.job_id, f"{what} of {stale} token attempt {ev.attempt} answered "
                                     f"{ev.status}, expected {'/'.join(sorted(allowed))}")
        return job if ev.status == "ok" and job is not None else None

    def acked(self, ev: Acked) -> None:
        job = self.fenced(ev, "completion")
        if job is None:
            return
        if not any(x.attempt == ev.attempt and x.outcome == "ok" for x in job.execs):
            self.fail(ev, job.id, f"completion of attempt {ev.attempt} accepted but no "
                                  "execution of it finished")
        job.accepted += 1
        if job.accepted > 1:
            self.fail(ev, job.id, "a second completion was accepted")
        job.settle(ev.attempt, "ack", ev.time)
        job.move("succeeded")

    def nacked(self, ev: Nacked) -> None:
        job = self.fenced(ev, "failure")
        if job is None:
            return
        self.expect_state(ev, job, job.state_after_nack(ev.outcome), ev.state)
        job.settle(ev.attempt, "nack", ev.time)
        if ev.state == "scheduled":
            job.due_at = ev.now + (ev.retry_in_s or 0.0)
        job.move(ev.state)

    def released(self, ev: Released) -> None:
        job = self.fenced(ev, "release")
        if job is None:
            return
        job.releases += 1
        self.expect_state(ev, job, job.state_after_release(), ev.state)
        job.close("release", ev.time)
        job.move(ev.state)

    def expired(self, ev: Expired) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None or job.open is None:
            self.fail(ev, ev.job_id, "the Reaper expired a lease that is not open")
            return
        if job.open.expires_at > ev.now + EPS:
            self.fail(ev, job.id, f"lease of attempt {job.open.attempt} expired early "
                                  f"(expires {job.open.expires_at:.3f}, now {ev.now:.3f})")
        self.expect_state(ev, job, job.state_after_expiry(), ev.state)
        job.close("expired", ev.time)
        job.move(ev.state)

    def cancelled(self, ev: Cancelled) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None:
            if ev.state != "missing":
                self.fail(ev, ev.job_id, f"cancel of an unknown job answered {ev.state}")
            return
        expected = "cancelled" if job.state in ("queued", "scheduled") else job.state
        self.expect_state(ev, job, expected, ev.state)
        if job.state == "active":
            job.cancel_requested = True
        elif job.state != ev.state:
            job.move(ev.state)

    def expect_state(self, ev: Event, job: JobModel, expected: str, got: str) -> None:
        if expected != got:
            rule = "DLQ exactly when attempts are exhausted" if "dead" in (expected, got) \
                else "state after the command"
            self.fail(ev, job.id, f"went to {got}, expected {expected} ({rule}; attempt "
                                  f"{job.attempt}, releases {job.releases}, "
                                  f"max_attempts {job.max_attempts})")

    # -- executions and clients --------------------------------------------------------

    def exec_started(self, ev: ExecStarted) -> None:
        job = self.jobs.get(ev.job_id)
        if job is None:
            self.fail(ev, ev.job_id, "executed but never stored (phantom)")
            return
        lease = job.leases.get(ev.attempt)
        if lease is None or lease.holder != ev.node:
            holder = lease.holder if lease else None
            self.fail(ev, job.id, f"attempt {ev.attempt} ran on {ev.node}, lease held by "
                                  f"{holder}")
        elif lease.executed:
            self.fail(ev, job.id, f"the lease of attempt {ev.attempt} ran twice")
        else:
            lease.executed = True
        if ev.args != job.args:
            self.fail(ev, job.id, "arguments delivered differ from those enqueued")
        job.execs.append(Exec(ev.attempt, ev.node, ev.life, ev.time))

    def exec_ended(self, ev: ExecEnded) -> None:
        job = self.jobs.get(ev.job_id)
        for run in job.execs if job is not None else ():
            if (run.attempt, run.node, run.life, run.outcome) == (ev.attempt, ev.node,
                                                                  ev.life, None):
                run.outcome, run.ended = ev.outcome, ev.time

    def enqueue_done(self, ev: EnqueueDone) -> None:
        self.enqueues.setdefault(ev.op, []).append(ev)

    def cron_registered(self, ev: CronRegistered) -> None:
        assert self.cron is not None
        self.cron.registered(ev)

    def cron_fired(self, ev: CronFired) -> None:
        assert self.cron is not None
        self.cron.fire(ev)

    def log_line(self, ev: LogLine) -> None:
        self.log_errors.append(ev.line())

    # -- after the run -----------------------------------------------------------------

    def finish(self) -> None:
        final_checks(self)

    def dup(self, reason: str) -> None:
        self.dups[reason] += 1


def _lease_rules(job: JobModel, ev: Leased) -> list[tuple[bool, str]]:
    previous = job.attempt
    return [
        (job.state in TERMINAL, f"leased after it was {job.state}"),
        (job.open is not None,
         f"overlapping leases: attempt {job.open.attempt if job.open else 0} still open"),
        (job.cancel_requested, "leased after cancellation was requested"),
        (ev.attempt != previous + 1, f"attempt {ev.attempt} follows attempt {previous}"),
        (ev.now + EPS < job.due_at, f"leased at {ev.now:.3f} before due {job.due_at:.3f}"),
    ]


_HANDLERS: dict[type, Any] = {
    Stored: _Checker.stored,
    Leased: _Checker.leased,
    Beat: _Checker.beat,
    Acked: _Checker.acked,
    Nacked: _Checker.nacked,
    Released: _Checker.released,
    Expired: _Checker.expired,
    Cancelled: _Checker.cancelled,
    ExecStarted: _Checker.exec_started,
    ExecEnded: _Checker.exec_ended,
    EnqueueDone: _Checker.enqueue_done,
    LogLine: _Checker.log_line,
    CronRegistered: _Checker.cron_registered,
    CronFired: _Checker.cron_fired,
}
