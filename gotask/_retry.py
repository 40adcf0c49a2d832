"""Retry policies: how long to wait before the next attempt of a failed job.

Rules of this module:
- A policy is a value (`RetryPolicy`, attrs frozen, message tag "retry") so it can travel
  with a task's defaults. It computes delays only; storage decides exhaustion from the
  job's `max_attempts`.
- Randomness comes from the caller's `random.Random` (the World's), never from `random`.
- Jitter is proportional: the capped delay is multiplied by a factor drawn uniformly from
  `[1 - jitter, 1]`. `jitter=0` is deterministic, `jitter=1` is "full jitter" (uniform in
  `[0, delay]`). Jitter only shortens a delay, so `cap_s` is a true upper bound.
"""

from __future__ import annotations

import enum
import math
import random

import attrs

from gotask._errors import NonRetryable, Retry
from gotask.runtime.message import message

__all__ = ["BackoffKind", "RetryPolicy", "RetryRule", "decide"]

# 2.0 ** 1023 is the largest power of two a float holds; later attempts are capped anyway.
_EXPONENT_MAX = 1023


class BackoffKind(enum.StrEnum):
    """How the delay grows with the attempt number n (1 = the first attempt failed)."""

    FIXED = "fixed"  # base_s
    LINEAR = "linear"  # base_s * n
    EXPONENTIAL = "exponential"  # base_s * 2 ** (n - 1)


_KINDS = frozenset(kind.value for kind in BackoffKind)


@message("retry")
@attrs.frozen
class RetryPolicy:
    """Backoff before the next attempt.

    Args:
        kind: "fixed", "linear" or "exponential".
        base_s: seconds of the first delay (>= 0).
        cap_s: the longest delay in seconds (>= base_s).
        jitter: fraction in [0, 1] by which a delay may be shortened at random.

    Raises:
        ValueError: a field is out of range (the message names it).
    """

    kind: str = BackoffKind.EXPONENTIAL.value
    base_s: float = 1.0
    cap_s: float = 600.0
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be 'fixed', 'linear' or 'exponential', got {self.kind!r}")
        if not (self.base_s >= 0 and math.isfinite(self.base_s)):
            raise ValueError(f"base_s must be a finite number >= 0, got {self.base_s}")
        if not (self.cap_s >= self.base_s and math.isfinite(self.cap_s)):
            raise ValueError(f"cap_s must be a finite number >= base_s, got {self.cap_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Return the seconds to wait after failed attempt number `attempt` (>= 1).

        Raises:
            ValueError: attempt < 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        delay = min(self._raw_delay_s(attempt), self.cap_s)
        if self.jitter:
            delay *= rng.uniform(1.0 - self.jitter, 1.0)
        return delay

    def _raw_delay_s(self, attempt: int) -> float:
        if self.kind == BackoffKind.FIXED:
            return self.base_s
        if self.kind == BackoffKind.LINEAR:
            return self.base_s * attempt
        return self.base_s * 2.0 ** min(attempt - 1, _EXPONENT_MAX)


@attrs.frozen
class RetryRule:
    """A per-exception retry rule: exceptions of these types use `policy`.

    `policy=None` makes the exceptions non-retryable: the job goes to the DLQ at once.
    """

    exceptions: tuple[type[BaseException], ...]
    policy: RetryPolicy | None


def decide(
    exc: BaseException,
    attempt: int,
    rng: random.Random,
    default: RetryPolicy | None,
    rules: tuple[RetryRule, ...] = (),
) -> float | None:
    """Return seconds before the next attempt after `exc`, or None for no retry.

    `NonRetryable` (and subclasses) never retries; `Retry(after_s=...)` raised by task
    code wins over policies; `Retry()` uses the matching rule's or
    the default policy (immediate when neither has one). Otherwise the first rule whose
    exceptions match decides, then `default`. Exhaustion is storage's decision.
    """
    if isinstance(exc, NonRetryable):
        return None
    policy = default
    for rule in rules:
        if isinstance(exc, rule.exceptions):
            policy = rule.policy
            break
    if isinstance(exc, Retry):
        if exc.after_s is not None:
            return max(0.0, exc.after_s)
        return policy.delay_s(attempt, rng) if policy is not None else 0.0
    return policy.delay_s(attempt, rng) if policy is not None else None
