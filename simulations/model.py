"""The checker's own model of each job, built from the history alone.

Rules of this module:
- The model never asks storage: it replays the history's storage events and decides, by
  the storage contract, what each answer should have been (`expected_status`) and where
  each job should have gone (`state_after_*`). The checker compares the two.
- A lease is open from its grant until an accepted ack, nack or release, or the Reaper's
  expiry closes it. Only the open lease's token is current: a lease past its expiry stays
  current until the Reaper handles it (the contract), so late heartbeats and acks count.
- Attempts that count against `max_attempts` are `attempt - releases` (no DLQ retries
  happen in simulations, so `attempt_base` is 0). An expiry of a lease whose start no
  accepted `Heartbeat(started=True)` announced counts as a release, the first
  `UNSTARTED_FREE_MAX` times per job; every other expiry counts.
"""

from __future__ import annotations

import attrs

from gotask._app import unpack_args
from gotask._job import UNSTARTED_FREE_MAX

__all__ = ["TERMINAL", "Exec", "JobModel", "Lease", "op_of"]

TERMINAL = frozenset({"succeeded", "dead", "cancelled"})


def op_of(args: bytes) -> str | None:
    """The op id a job's arguments carry (their first positional argument)."""
    try:
        positional, _ = unpack_args(args)
    except Exception:
        return None
    return positional[0] if positional and isinstance(positional[0], str) else None


@attrs.define
class Lease:
    """One lease of a job; times: `granted`/`closed_at` trio, `expires_at` storage."""

    attempt: int
    holder: str
    granted: float
    expires_at: float
    closed_by: str | None = None
    closed_at: float | None = None
    executed: bool = False
    start_stored: bool = False


@attrs.define
class Exec:
    """One run of a task function."""

    attempt: int
    node: str
    life: int
    started: float
    outcome: str | None = None
    ended: float | None = None


@attrs.define
class JobModel:
    """What the history says about one stored job."""

    id: str
    key: str | None
    args: bytes
    op: str | None
    max_attempts: int
    due_at: float
    state: str
    leases: dict[int, Lease] = attrs.Factory(dict)
    open: Lease | None = None
    releases: int = 0
    settled: dict[int, str] = attrs.Factory(dict)
    last_settled: int = 0
    accepted: int = 0
    terminal: list[str] = attrs.Factory(list)
    cancel_requested: bool = False
    execs: list[Exec] = attrs.Factory(list)
    free_expiries: int = 0

    @property
    def attempt(self) -> int:
        """The latest lease's attempt number (0: never leased)."""
        return max(self.leases, default=0)

    def exhausted(self) -> bool:
        """True when the attempts that count reached `max_attempts`."""
        return self.attempt - self.releases >= self.max_attempts

    def current(self, attempt: int) -> bool:
        """True when `attempt` is the open lease's token."""
        return self.open is not None and self.open.attempt == attempt

    def expected_status(self, attempt: int) -> frozenset[str]:
        """The answers the contract allows to an ack, nack or release of this token."""
        if self.current(attempt):
            return frozenset({"ok"})
        if attempt == self.last_settled:
            return frozenset({"duplicate"})
        if attempt in self.settled:
            return frozenset({"duplicate", "stale"})
        return frozenset({"stale"})

    def close(self, how: str, at: float) -> None:
        """Close the open lease."""
        if self.open is not None:
            self.open.closed_by, self.open.closed_at = how, at
            self.open = None

    def settle(self, attempt: int, how: str, at: float) -> None:
        """An ack or nack of the open lease was accepted."""
        self.settled[attempt] = how
        self.last_settled = attempt
        self.close(how, at)

    def move(self, state: str) -> None:
        """Set the model's state, noting terminal states entered."""
        self.state = state
        if state in TERMINAL:
            self.terminal.append(state)

    def state_after_nack(self, outcome: str) -> str:
        """Where an accepted nack sends the job (the lease still counts as open)."""
        if outcome == "cancelled" or (outcome == "retry" and self.cancel_requested):
            return "cancelled"
        if outcome == "dead" or self.exhausted():
            return "dead"
        return "scheduled"

    def state_after_expiry(self) -> str:
        """Where the Reaper sends a job whose lease expired (an unstarted lease's expiry
        is counted as a release here while it is free)."""
        if (self.open is not None and not self.open.start_stored
                and self.free_expiries < UNSTARTED_FREE_MAX):
            self.free_expiries += 1
            self.releases += 1
        if self.cancel_requested:
            return "cancelled"
        return "dead" if self.exhausted() else "queued"

    def state_after_release(self) -> str:
        """Where a release sends the job (`releases` already counted)."""
        return "cancelled" if self.cancel_requested else "queued"
