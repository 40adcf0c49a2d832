"""When the Redis storage actor leases a parked `LeaseWait` again (no Redis needed)."""

from __future__ import annotations

import math
from typing import Any

from gotask.actors.storage._redis_backend import Events
from gotask.actors.storage.base import EnqueueJobs, LeaseJobs, QueueWeight
from gotask.actors.storage.redis import _note_enqueued, _Parked, _State, _take_events

from .contract import new_job

LEASED_AT = 1000.0  # the storage time the parked lease ran at


def _parked(*queues: str) -> tuple[_State, _Parked]:
    state = _State(storage=None, jitter=lambda: 1.0)  # type: ignore[arg-type]
    lease = LeaseJobs("n1", tuple(QueueWeight(q) for q in queues), 10, 30.0)
    wait = _Parked(request=None, lease=lease, deadline=math.inf,  # type: ignore[arg-type]
                   seen=state.wakes, leased_at=LEASED_AT)
    return state, wait


def _event(state: _State, now: float | None, *ready: str, resubscribed: bool = False) -> None:
    ctx: Any = None  # only cancellations need the actor's context
    _take_events(ctx, state, Events(now=now, ready=frozenset(ready), resubscribed=resubscribed))


async def test_an_event_older_than_the_lease_does_not_wake_it() -> None:
    # A script that ran before the lease published it: the lease saw those jobs.
    state, wait = _parked("q")
    _event(state, LEASED_AT - 0.001, "q")
    assert not state.woken_since(wait)


async def test_an_event_as_old_as_the_lease_or_newer_wakes_it() -> None:
    state, wait = _parked("q")
    _event(state, LEASED_AT, "q")  # same microsecond: which ran first is unknown
    assert state.woken_since(wait)
    state, wait = _parked("q")
    _event(state, LEASED_AT + 0.5, "q")
    assert state.woken_since(wait)


async def test_a_newer_event_wakes_it_after_an_older_one() -> None:
    state, wait = _parked("q")
    _event(state, LEASED_AT - 1.0, "q")
    assert not state.woken_since(wait)
    _event(state, LEASED_AT + 1.0, "q")
    assert state.woken_since(wait)


async def test_only_events_for_its_queues_wake_it() -> None:
    state, wait = _parked("q", "r")
    _event(state, LEASED_AT + 1.0, "other")
    assert not state.woken_since(wait)
    _event(state, LEASED_AT + 1.0, "r")
    assert state.woken_since(wait)


async def test_a_local_enqueue_and_a_lost_subscription_always_wake_it() -> None:
    state, wait = _parked("q")
    _note_enqueued(state, EnqueueJobs((new_job("q"),)))  # sent after the lease
    assert state.woken_since(wait)
    state, wait = _parked("q")
    _event(state, None, resubscribed=True)  # events may have been missed
    assert state.woken_since(wait)


async def test_events_before_the_lease_was_sent_do_not_count() -> None:
    state = _State(storage=None, jitter=lambda: 1.0)  # type: ignore[arg-type]
    _event(state, LEASED_AT + 5.0, "q")  # seen before the lease left: its count is old
    lease = LeaseJobs("n1", (QueueWeight("q"),), 10, 30.0)
    wait = _Parked(request=None, lease=lease, deadline=math.inf,  # type: ignore[arg-type]
                   seen=state.wakes, leased_at=LEASED_AT)
    assert not state.woken_since(wait)
