"""Retry policies: backoff kinds, cap, jitter bounds, validation and `decide`."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from gotask._errors import Retry
from gotask._retry import RetryPolicy, RetryRule, decide
from gotask.runtime.message import REGISTRY


def delays(policy: RetryPolicy, attempts: range, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [policy.delay_s(n, rng) for n in attempts]


def test_fixed() -> None:
    assert delays(RetryPolicy("fixed", 2.5, 10.0, 0.0), range(1, 5)) == [2.5] * 4


def test_linear() -> None:
    assert delays(RetryPolicy("linear", 2.0, 7.0, 0.0), range(1, 6)) == [2, 4, 6, 7, 7]


def test_exponential_grows_until_the_cap() -> None:
    got = delays(RetryPolicy("exponential", 0.5, 30.0, 0.0), range(1, 10))
    assert got == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert all(a <= b for a, b in itertools.pairwise(got))


def test_huge_attempt_is_capped_without_overflow() -> None:
    policy = RetryPolicy("exponential", 1000.0, 86_400.0, 0.5)
    assert 43_200.0 <= policy.delay_s(10**6, random.Random(0)) <= 86_400.0


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy("fixed", 10.0, 10.0, 0.25)
    got = delays(policy, range(1, 2001), seed=7)
    assert all(7.5 <= d <= 10.0 for d in got)
    assert min(got) < 7.6 and max(got) > 9.9


def test_full_jitter_spans_zero_to_delay() -> None:
    got = delays(RetryPolicy("exponential", 1.0, 8.0, 1.0), range(4, 2004), seed=3)
    assert all(0.0 <= d <= 8.0 for d in got)
    assert min(got) < 0.1 and max(got) > 7.9


def test_jitter_is_reproducible_from_the_seed() -> None:
    policy = RetryPolicy()
    assert delays(policy, range(1, 20), seed=42) == delays(policy, range(1, 20), seed=42)
    assert delays(policy, range(1, 20), seed=42) != delays(policy, range(1, 20), seed=43)


def test_defaults_and_registration() -> None:
    assert RetryPolicy() == RetryPolicy("exponential", 1.0, 600.0, 0.2)
    assert REGISTRY["retry"] is RetryPolicy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "random"}, "kind must be 'fixed', 'linear' or 'exponential', got 'random'"),
        ({"base_s": -1.0}, "base_s must be a finite number >= 0, got -1.0"),
        ({"base_s": float("nan")}, "base_s must be a finite number >= 0, got nan"),
        ({"base_s": 5.0, "cap_s": 4.0}, "cap_s must be a finite number >= base_s, got 4.0"),
        ({"cap_s": float("inf")}, "cap_s must be a finite number >= base_s, got inf"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1, got 1.5"),
        ({"jitter": -0.1}, "jitter must be between 0 and 1, got -0.1"),
    ],
)
def test_bad_values_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        RetryPolicy(**fields)
    assert str(caught.value) == message


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^attempt must be >= 1, got 0$"):
        RetryPolicy().delay_s(0, random.Random(0))


class TestDecide:
    policy = RetryPolicy("fixed", 5.0, 5.0, 0.0)
    rules = (
        RetryRule((KeyError,), None),
        RetryRule((LookupError,), RetryPolicy("fixed", 1.0, 1.0, 0.0)),
    )

    def decide(self, exc: BaseException, default: RetryPolicy | None = policy) -> float | None:
        return decide(exc, 1, random.Random(0), default, self.rules)

    def test_default_policy(self) -> None:
        assert self.decide(ValueError()) == 5.0

    def test_first_matching_rule_wins(self) -> None:
        assert self.decide(IndexError()) == 1.0
        assert self.decide(KeyError()) is None

    def test_no_policy_means_no_retry(self) -> None:
        assert self.decide(ValueError(), default=None) is None

    def test_retry_from_task_code(self) -> None:
        assert self.decide(Retry(after_s=12.0)) == 12.0
        assert self.decide(Retry(after_s=-3.0)) == 0.0
        assert self.decide(Retry()) == 5.0
        assert self.decide(Retry(), default=None) == 0.0


def test_non_retryable_never_retries_even_with_a_policy() -> None:
    import random

    from gotask._errors import NonRetryable
    from gotask._retry import RetryPolicy, RetryRule, decide

    class PaymentRefused(NonRetryable):
        pass

    rng = random.Random(1)
    rules = (RetryRule((Exception,), RetryPolicy()),)
    assert decide(PaymentRefused("card blocked"), 1, rng, RetryPolicy(), rules) is None
    assert 0.8 <= decide(ValueError("x"), 1, rng, None, rules) <= 1.0  # type: ignore[operator]
