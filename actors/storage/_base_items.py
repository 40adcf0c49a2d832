"""The storage contract's statuses and items: the values its commands carry and answer.

Rules of this module: those of `base` (the contract), which re-exports every name here.
Items are `@message` values like the commands and replies; those with a rule (a weight, an
outcome, a fraction) check it at construction.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from gotask.runtime.message import message

__all__ = [
    "AckItem",
    "NackItem",
    "NodeInfo",
    "Outcome",
    "ProgressItem",
    "QueueCount",
    "QueueWeight",
    "Status",
]


class Status(enum.StrEnum):
    """Per-item answers of the fenced commands."""

    OK = "ok"  # applied
    STALE = "stale"  # the token is not current: the worker must stop
    DUPLICATE = "duplicate"  # this token's ack/nack was already accepted; nothing changed
    CANCEL = "cancel"  # heartbeat applied, but cancellation was requested
    MISSING = "missing"  # no such job (never enqueued, or purged)


class Outcome(enum.StrEnum):
    """What a nack asks for."""

    RETRY = "retry"  # scheduled after retry_in_s, or dead when out of attempts
    DEAD = "dead"  # a non-retryable error: to the DLQ at once
    CANCELLED = "cancelled"  # the job honoured a cancellation


_OUTCOMES = frozenset(o.value for o in Outcome)


# -- items -------------------------------------------------------------------------


@message("s.qweight")
@attrs.frozen
class QueueWeight:
    """A queue to lease from and its share (an integer >= 1) of the leases."""

    name: str
    weight: int = 1

    def __attrs_post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"weight of queue {self.name!r} must be >= 1, got {self.weight}")


@message("s.ack.item")
@attrs.frozen
class AckItem:
    """A successful attempt: the token and the msgpack-encoded result.

    `queue` is the job's queue when the sender knows it (a worker does), None otherwise.
    It is a hint: a backend may use it to find the job without a lookup, and must answer
    as if it were absent when it is wrong.
    """

    job_id: str
    attempt: int
    result: bytes
    queue: str | None = None


@message("s.nack.item")
@attrs.frozen
class NackItem:
    """A failed attempt and what to do next.

    `outcome` is an `Outcome` value; `retry_in_s` (>= 0, None = 0) is the delay before
    the next attempt when the outcome is "retry".
    """

    job_id: str
    attempt: int
    error_type: str
    error: str
    traceback: str
    retry_in_s: float | None = None
    outcome: str = Outcome.RETRY.value

    def __attrs_post_init__(self) -> None:
        if self.outcome not in _OUTCOMES:
            raise ValueError(
                f"outcome must be 'retry', 'dead' or 'cancelled', got {self.outcome!r}"
            )
        if self.retry_in_s is not None and not (
            self.retry_in_s >= 0 and math.isfinite(self.retry_in_s)
        ):
            raise ValueError(f"retry_in_s must be a finite number >= 0, got {self.retry_in_s}")


@message("s.prog.item")
@attrs.frozen
class ProgressItem:
    """Progress of a running attempt: a fraction in [0, 1] and a short message."""

    job_id: str
    attempt: int
    fraction: float
    message: str = ""

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {self.fraction}")


@message("s.qcount")
@attrs.frozen
class QueueCount:
    """How many jobs of one queue are in one state."""

    queue: str
    state: str
    count: int


@message("s.node")
@attrs.frozen
class NodeInfo:
    """A live node as the registry knows it; times on the storage clock."""

    node: str
    info: dict[str, Any]
    first_seen: float
    last_seen: float
    expires_at: float
