"""The job model: states, the transition table, and the job messages storage speaks.

Rules of this module:
- `TRANSITIONS` is the one table of legal state changes. Storage moves a job only along
  it (`check_transition`); tests and docs read the same table.
- `failed` names the outcome of an attempt, not a stored state. A failed attempt is
  recorded on the job (`error_type`, `error`, `traceback`) and the job moves straight
  from `active` to `scheduled` (a retry), `dead` or `cancelled`. Events may report
  `failed`; storage never holds it, so it has no edges in the table.
- `succeeded`, `dead` and `cancelled` are terminal: nothing moves a job out of them
  automatically. Only an operator's DLQ retry takes a job from `dead` back to `queued`.
- All times are float seconds on the storage's clock; all durations are seconds.
- The lease token of a job is `(id, attempt)`. Attempts that count against
  `max_attempts` are `attempt - releases - attempt_base`.
- Every finished attempt leaves an `AttemptRecord` on its job, written by storage in the
  same write that ends the attempt; a job keeps the last `HISTORY_MAX` of them and counts
  the older ones in `history_dropped`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from gotask._errors import IllegalTransition
from gotask.runtime.message import message

__all__ = [
    "ARGS_BYTES_MAX",
    "ATTEMPTS_MAX",
    "ATTEMPT_ERROR_CHARS_MAX",
    "DURATION_S_MAX",
    "HISTORY_MAX",
    "NAME_CHARS_MAX",
    "RESULT_BYTES_MAX",
    "STORED_STATES",
    "TERMINAL",
    "TRANSITIONS",
    "UNSTARTED_FREE_MAX",
    "AttemptOutcome",
    "AttemptRecord",
    "JobRecord",
    "JobState",
    "LeaseToken",
    "NewJob",
    "attempt_error",
    "check_job_fields",
    "check_transition",
    "expiry",
    "with_attempt",
]

#: Longest task or queue name, in characters; names must also be printable.
NAME_CHARS_MAX = 128
_PRIORITY_MIN, _PRIORITY_MAX = -(2**31), 2**31 - 1
#: Most attempts a job may be given.
ATTEMPTS_MAX = 1000
#: Longest delay, timeout or result lifetime, in seconds (ten years).
DURATION_S_MAX = 10 * 365 * 86_400.0
#: Largest msgpack encoding of a job's arguments, in bytes. With `RESULT_BYTES_MAX` it
#: keeps a whole job record within one 1 MiB wire frame; a node may only lower them.
ARGS_BYTES_MAX = 512 * 1024
#: Largest msgpack encoding of a task's result, in bytes.
RESULT_BYTES_MAX = 256 * 1024
#: Longest idempotency key, in characters.
KEY_CHARS_MAX = 256
#: Finished attempts a job keeps in its history; older ones are only counted.
HISTORY_MAX = 10
#: Longest error text an `AttemptRecord` keeps (the job keeps the last one in full).
ATTEMPT_ERROR_CHARS_MAX = 200
#: Lease expiries of a job never known to start that cost no attempt; later ones count.
UNSTARTED_FREE_MAX = 3


class JobState(enum.StrEnum):
    """Where a job is in its life. Values are the strings stored and sent."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


_S = JobState

#: States a job ends in; no automatic transition leaves them.
TERMINAL: frozenset[JobState] = frozenset({_S.SUCCEEDED, _S.DEAD, _S.CANCELLED})

#: States storage may hold (all but `failed`, which only names an attempt's outcome).
STORED_STATES: frozenset[JobState] = frozenset(_S) - {_S.FAILED}

#: Allowed transitions, from state to the states it may move to.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        _S.SCHEDULED: frozenset({_S.QUEUED, _S.CANCELLED}),
        _S.QUEUED: frozenset({_S.ACTIVE, _S.CANCELLED}),
        _S.ACTIVE: frozenset({_S.SUCCEEDED, _S.SCHEDULED, _S.QUEUED, _S.DEAD, _S.CANCELLED}),
        _S.FAILED: frozenset(),
        _S.SUCCEEDED: frozenset(),
        _S.DEAD: frozenset({_S.QUEUED}),
        _S.CANCELLED: frozenset(),
    }
)


def check_transition(old: JobState, new: JobState, job_id: str | None = None) -> None:
    """Check that a job may move from `old` to `new`.

    Raises:
        IllegalTransition: the edge is not in `TRANSITIONS`.
    """
    if new not in TRANSITIONS[old]:
        where = f"job {job_id}: " if job_id is not None else ""
        raise IllegalTransition(f"{where}illegal job state transition: {old} -> {new}")


@message("token")
@attrs.frozen
class LeaseToken:
    """Names one lease: the job and the attempt number its lease gave it."""

    job_id: str
    attempt: int


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended. Values are the strings stored and sent."""

    SUCCEEDED = "succeeded"  # acked
    FAILED = "failed"  # nacked for a retry or to the DLQ
    CANCELLED = "cancelled"  # nacked after honouring a cancellation
    RELEASED = "released"  # given back by a graceful shutdown: not counted
    NODE_LOST = "node_lost"  # the job ran, and its node stopped renewing the lease
    NOT_STARTED = "not_started"  # the lease expired before the job was known to start
    LEASE_EXPIRED = "lease_expired"  # as not_started, past UNSTARTED_FREE_MAX: counted


@message("attempt")
@attrs.frozen
class AttemptRecord:
    """One finished attempt of a job, as storage wrote it when the attempt ended.

    `leased_at` and `ended_at` are seconds on the storage clock: the attempt began when
    storage leased it to `node`. `outcome` is an `AttemptOutcome` value; `error` is
    `"ErrorType: message"` cut to `ATTEMPT_ERROR_CHARS_MAX` characters, or None.
    """

    attempt: int
    node: str | None
    leased_at: float | None
    ended_at: float
    outcome: str
    error: str | None = None


def attempt_error(error_type: str | None, error: str | None) -> str | None:
    """The error text an `AttemptRecord` keeps, or None when there is no error."""
    if error_type is None:
        return None
    return f"{error_type}: {error or ''}"[:ATTEMPT_ERROR_CHARS_MAX]


def expiry(
    attempt: int, node: str | None, started_attempt: int, unstarted_expiries: int
) -> tuple[str, str | None, str | None]:
    """How the expiry of a job's current lease (`attempt`, held by `node`) ends the
    attempt: its outcome, and the error type and text the job records (None, None: the
    attempt does not count)."""
    where = f"attempt {attempt} on node {node!r}"
    if started_attempt == attempt:
        return (AttemptOutcome.NODE_LOST.value, "NodeLost",
                f"{where} was running when its node stopped renewing the lease "
                "(the node died, hung or lost storage)")
    if unstarted_expiries < UNSTARTED_FREE_MAX:
        return AttemptOutcome.NOT_STARTED.value, None, None
    return (AttemptOutcome.LEASE_EXPIRED.value, "LeaseExpired",
            f"lease of {where} expired before the job was known to start "
            f"({UNSTARTED_FREE_MAX} such expiries were free already)")


def with_attempt(
    history: tuple[AttemptRecord, ...], dropped: int, entry: AttemptRecord
) -> tuple[tuple[AttemptRecord, ...], int]:
    """`history` and its `dropped` count after appending `entry` (keeps `HISTORY_MAX`)."""
    kept = (*history, entry)
    if len(kept) <= HISTORY_MAX:
        return kept, dropped
    return kept[-HISTORY_MAX:], dropped + len(kept) - HISTORY_MAX


@message("job")
@attrs.frozen(slots=False)
class JobRecord:
    """A job as storage holds it, sent to workers on lease and to readers on query.

    `args` is the msgpack encoding of `[args_list, kwargs_map]`, stored and delivered
    byte-identical. `attempt` counts leases; `releases` counts leases given back by a
    graceful shutdown; `attempt_base` is the count of attempts used before the last DLQ
    retry; `settled_attempt` is the attempt whose ack or nack was accepted last (0: none).
    Times (`*_at`) are seconds on the storage clock, durations (`*_s`) seconds.
    `expires_at` is when the finished job and its result are purged (None: never).
    `started_attempt` is the latest attempt whose worker told storage it started the job
    (0: none); `unstarted_expiries` counts leases that expired before their job was known
    to start and cost no attempt (they are counted in `releases` too). `history` holds
    the last `HISTORY_MAX` finished attempts, oldest first; `history_dropped` counts the
    older ones.

    Not slotted on purpose: attrs initialises a frozen dict-based instance by writing its
    `__dict__`, twice as fast as slots, and storage builds one record per leased job.
    Fields are in a fixed order so storage may pass them positionally.
    """

    id: str
    task: str
    queue: str
    args: bytes
    priority: int
    state: str
    created_at: float
    due_at: float
    max_attempts: int
    result_ttl_s: float
    attempt: int = 0
    releases: int = 0
    attempt_base: int = 0
    settled_attempt: int = 0
    leased_at: float | None = None
    finished_at: float | None = None
    lease_expires_at: float | None = None
    lease_node: str | None = None
    timeout_s: float | None = None
    result: bytes | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    progress: float = 0.0
    progress_message: str = ""
    idempotency_key: str | None = None
    cancel_requested: bool = False
    expires_at: float | None = None
    started_attempt: int = 0
    unstarted_expiries: int = 0
    history: tuple[AttemptRecord, ...] = ()
    history_dropped: int = 0

    @property
    def token(self) -> LeaseToken:
        """The token of this job's latest lease."""
        return LeaseToken(self.id, self.attempt)

    @property
    def attempts_counted(self) -> int:
        """Attempts that count against `max_attempts`."""
        return self.attempt - self.releases - self.attempt_base

    @property
    def is_terminal(self) -> bool:
        """True when the job is succeeded, dead or cancelled."""
        return self.state in TERMINAL


def _positive_finite(value: float) -> bool:
    return 0 < value <= DURATION_S_MAX


def _nonneg_finite(value: float) -> bool:
    return 0 <= value <= DURATION_S_MAX


def _check_name(what: str, text: str | None) -> None:
    if text is None:
        return
    if not 0 < len(text) <= NAME_CHARS_MAX:
        raise ValueError(f"{what} must be 1-{NAME_CHARS_MAX} characters: {text!r}")
    if not text.isprintable():
        raise ValueError(f"{what} must be printable (no control characters): {text!r}")


def _check_durations(delay_s: float, timeout_s: float | None,
                     result_ttl_s: float | None) -> None:
    limit = f"{DURATION_S_MAX:.0f}"
    if not _nonneg_finite(delay_s):
        raise ValueError(f"delay_s must be a number 0-{limit}, got {delay_s}")
    if timeout_s is not None and not _positive_finite(timeout_s):
        raise ValueError(f"timeout_s must be a number > 0 and <= {limit} or None, "
                         f"got {timeout_s}")
    if result_ttl_s is not None and not _nonneg_finite(result_ttl_s):
        raise ValueError(f"result_ttl_s must be a number 0-{limit}, got {result_ttl_s}")


def check_job_fields(
    *,
    task: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    delay_s: float = 0.0,
    max_attempts: int | None = None,
    timeout_s: float | None = None,
    result_ttl_s: float | None = None,
    idempotency_key: str | None = None,
    args: bytes | None = None,
) -> None:
    """The one range check of a job's fields (None: not given, nothing to check).

    Used where a job's fields come in: a client's `JobSpec` (where it is made, and again
    where the node decodes it) and a task's defaults. Names are 1-`NAME_CHARS_MAX`
    printable characters; durations are finite, at most `DURATION_S_MAX`; attempts are
    1-`ATTEMPTS_MAX`; encoded arguments at most `ARGS_BYTES_MAX` bytes.

    Raises:
        ValueError: a field is out of range (the message names it).
    """
    _check_name("task", task)
    _check_name("queue", queue)
    if priority is not None and not _PRIORITY_MIN <= priority <= _PRIORITY_MAX:
        raise ValueError(f"priority must be a signed 32-bit integer, got {priority}")
    _check_durations(delay_s, timeout_s, result_ttl_s)
    if max_attempts is not None and not 1 <= max_attempts <= ATTEMPTS_MAX:
        raise ValueError(f"max_attempts must be 1-{ATTEMPTS_MAX}, got {max_attempts}")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= KEY_CHARS_MAX:
        raise ValueError(f"idempotency_key must be 1-{KEY_CHARS_MAX} characters: "
                         f"{idempotency_key!r}")
    if args is not None and len(args) > ARGS_BYTES_MAX:
        raise ValueError(f"arguments encode to {len(args)} bytes; the limit is "
                         f"{ARGS_BYTES_MAX}")


@message("newjob")
@attrs.frozen
class NewJob:
    """A job to enqueue, as the Broker sends it to storage.

    The Broker builds it from a client's `JobSpec` (checked where it was made and again
    where it was decoded) and the task's defaults (checked at registration), with an id
    from its World: it is not checked a third time.

    Args:
        id: generated by the Broker from its World; storage never makes ids.
        task: registered task name. queue: queue name.
        args: msgpack of `[args_list, kwargs_map]`, kept byte-identical.
        priority: higher runs first; a signed 32-bit integer.
        delay_s: seconds from the storage's now until the job is due (>= 0).
        max_attempts: attempts before the job goes to the DLQ (>= 1).
        timeout_s: seconds one attempt may run, or None for no limit.
        result_ttl_s: seconds a finished job and its result are kept (>= 0).
        idempotency_key: a repeat enqueue with a known key returns the existing job.
    """

    id: str
    task: str
    queue: str
    args: bytes
    priority: int = 0
    delay_s: float = 0.0
    max_attempts: int = 3
    timeout_s: float | None = None
    result_ttl_s: float = 86_400.0
    idempotency_key: str | None = None
