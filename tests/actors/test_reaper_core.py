"""ReaperCore, synchronously: one round is a fixed sequence of storage calls."""

from __future__ import annotations

import math

from gotask._job_metrics import LeasesExpired
from gotask.actors._effects import Call, Called, CallFailed, JobEvent, Log
from gotask.actors.reaper import EXPIRE, PURGE, REGISTER, REQUEUE, ReaperCore, ReaperTick
from gotask.actors.storage.base import (
    ExpireNodes,
    PurgeExpired,
    RegisterNode,
    RequeueExpired,
    RequeueExpiredReply,
)
from gotask.runtime import Address

STORE = Address("n1", "storage")
INFO = {"pid": 7}


def core(limit: int = 1000) -> ReaperCore:
    return ReaperCore("n1", STORE, interval_s=1.0, node_ttl_s=15.0, limit=limit)


def test_a_round_runs_every_step_in_order_then_waits_the_interval() -> None:
    reaper = core()
    assert reaper.deadline() == -math.inf
    effects = reaper.handle(ReaperTick(50.0, INFO), 50.0)
    assert effects == [Call(STORE, RegisterNode("n1", INFO, 15.0), REGISTER)]
    assert reaper.deadline() == math.inf
    assert reaper.handle(Called(REGISTER, None), 50.1) == [
        Call(STORE, RequeueExpired(1000), REQUEUE)]
    reply = RequeueExpiredReply(("a",), (), ())
    assert reaper.handle(Called(REQUEUE, reply), 50.2) == [
        JobEvent("lease expired", "a", detail="queued again"),
        LeasesExpired(requeued=1),
        Call(STORE, PurgeExpired(1000), PURGE)]
    assert reaper.handle(Called(PURGE, None), 50.3) == [Call(STORE, ExpireNodes(), EXPIRE)]
    assert reaper.handle(Called(EXPIRE, None), 50.4) == []
    assert reaper.deadline() == 51.4
    assert reaper.handle(ReaperTick(51.0, INFO), 51.0) == []
    assert reaper.handle(ReaperTick(51.4, INFO), 51.4)[0].tag == REGISTER  # type: ignore[union-attr]


def test_a_full_requeue_batch_requeues_again_and_dead_jobs_are_logged() -> None:
    reaper = core(limit=2)
    reaper.handle(ReaperTick(0.0, INFO), 0.0)
    reaper.handle(Called(REGISTER, None), 0.0)
    effects = reaper.handle(Called(REQUEUE, RequeueExpiredReply(("a",), ("b",), ())), 0.1)
    assert effects[:2] == [
        JobEvent("lease expired", "a", detail="queued again"),
        JobEvent("lease expired", "b", detail="out of attempts: moved to the dead-letter queue")]
    assert effects[2] == LeasesExpired(requeued=1, dead=1)
    assert isinstance(effects[3], Log) and "b" in effects[3].text
    assert effects[4] == Call(STORE, RequeueExpired(2), REQUEUE)
    effects = reaper.handle(Called(REQUEUE, RequeueExpiredReply((), (), ("c",))), 0.2)
    assert effects == [JobEvent("lease expired", "c", detail="cancelled, as was asked"),
                       LeasesExpired(cancelled=1), Call(STORE, PurgeExpired(2), PURGE)]


def test_a_failed_step_ends_the_round_with_a_warning() -> None:
    reaper = core()
    reaper.handle(ReaperTick(0.0, INFO), 0.0)
    effects = reaper.handle(CallFailed(REGISTER, "StorageUnavailable", "down", True), 3.0)
    assert len(effects) == 1 and isinstance(effects[0], Log) and "down" in effects[0].text
    assert reaper.step is None and reaper.deadline() == 4.0


def test_answers_out_of_step_are_ignored() -> None:
    reaper = core()
    reaper.handle(ReaperTick(0.0, INFO), 0.0)
    assert reaper.handle(Called(PURGE, None), 0.1) == []
    assert reaper.handle(CallFailed(EXPIRE, "E", "e", False), 0.1) == []
    assert reaper.step == REGISTER
    assert reaper.handle(ReaperTick(9.0, INFO), 9.0) == []  # a round is running
