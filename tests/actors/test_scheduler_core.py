"""SchedulerCore, synchronously: a timer heap turned into PromoteDue calls."""

from __future__ import annotations

import math

from gotask.actors._effects import Call, Called, CallFailed, Log, Tick
from gotask.actors.scheduler import PROMOTE, SchedulerCore
from gotask.actors.storage.base import PromoteDue, PromoteDueReply
from gotask.runtime import Address

STORE = Address("n1", "storage")


def started(interval_s: float = 0.2, limit: int = 1000) -> SchedulerCore:
    core = SchedulerCore(STORE, interval_s, limit)
    assert core.deadline() == -math.inf
    assert core.handle(Tick(100.0), 100.0) == []
    return core


def test_first_promotion_comes_one_interval_after_start() -> None:
    core = started()
    assert core.deadline() == 100.2
    assert core.handle(Tick(100.1), 100.1) == []
    assert core.handle(Tick(100.2), 100.2) == [Call(STORE, PromoteDue(1000), PROMOTE)]


def test_no_second_call_while_one_is_in_flight() -> None:
    core = started()
    core.handle(Tick(100.2), 100.2)
    assert core.deadline() == math.inf
    assert core.handle(Tick(105.0), 105.0) == []


def test_a_full_batch_promotes_again_at_once() -> None:
    core = started(limit=10)
    core.handle(Tick(100.2), 100.2)
    again = core.handle(Called(PROMOTE, PromoteDueReply(10)), 100.3)
    assert again == [Call(STORE, PromoteDue(10), PROMOTE)]
    assert core.handle(Called(PROMOTE, PromoteDueReply(3)), 100.4) == []
    assert core.deadline() == 100.4 + 0.2


def test_a_failure_is_logged_and_tried_at_the_next_interval() -> None:
    core = started()
    core.handle(Tick(100.2), 100.2)
    effects = core.handle(CallFailed(PROMOTE, "CallTimeout", "no answer", False), 110.0)
    assert len(effects) == 1 and isinstance(effects[0], Log)
    assert "no answer" in effects[0].text
    assert core.deadline() == 110.2
    assert core.handle(Tick(110.2), 110.2) == [Call(STORE, PromoteDue(1000), PROMOTE)]


def test_a_wrong_reply_is_logged_and_the_timer_rearmed() -> None:
    core = started()
    core.handle(Tick(100.2), 100.2)
    effects = core.handle(Called(PROMOTE, "what"), 100.3)
    assert len(effects) == 1 and isinstance(effects[0], Log)
    assert core.deadline() == 100.5


def test_answers_to_unknown_tags_change_nothing() -> None:
    core = started()
    assert core.handle(Called("other", PromoteDueReply(1)), 100.1) == []
    assert core.handle(CallFailed("other", "E", "e", True), 100.1) == []
    assert core.deadline() == 100.2
