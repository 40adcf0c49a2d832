"""The storage contract's cron block (issue 15), run by every backend via `StorageContract`.

A tick fires once across any number of nodes because `CronFire` is a compare-and-set on
the entry's last fired tick; these tests pin that, registration (definitions, the newest
wins, unknown names reported) and the durable paused flag.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, TypeVar

from gotask._job import NewJob
from gotask.actors.storage.base import (
    CRON_EARLY,
    CRON_FIRED,
    CRON_MISSING,
    CRON_PAUSED,
    CRON_STALE,
    Command,
    CronDef,
    CronFire,
    CronList,
    CronRegister,
    CronSetPaused,
    CronState,
    GetJobs,
)
from gotask.runtime.world import encode_id

__all__ = ["CronContract"]

R = TypeVar("R")
_next_id = [10_000_000]


class _Harness(Protocol):
    def execute(self, cmd: Command[R]) -> R: ...
    def advance(self, seconds: float) -> None: ...
    def now(self) -> float: ...


def _job(name: str, tick: int, **fields: Any) -> NewJob:
    _next_id[0] += 1
    return NewJob(id=encode_id(_next_id[0]), task="tests.noop", queue="default",
                  args=b"\x92\x90\x80", idempotency_key=f"cron:{name}:{tick}", **fields)


def _register(s: _Harness, node: str, **defs: str) -> Any:
    return s.execute(CronRegister(node, tuple(CronDef(n, d) for n, d in defs.items())))


def _state(s: _Harness, name: str) -> CronState:
    (state,) = [e for e in s.execute(CronList()).states if e.name == name]
    return state


class CronContract:
    """Cron entries in storage: register, fire by compare-and-set, list, pause."""

    def test_cron_register_starts_at_the_registration_time(self, storage: _Harness) -> None:
        reply = _register(storage, "n1", hourly="A")
        (state,) = reply.states
        assert state == CronState("hourly", "A", "n1", storage.now(),
                                  math.floor(storage.now()), False, None)
        assert reply.changed == () and reply.unknown == ()
        assert storage.execute(CronList()).states == (state,)

    def test_cron_reregistration_keeps_progress_and_newest_definition_wins(
        self, storage: _Harness
    ) -> None:
        _register(storage, "n1", a="A", b="B")
        start = math.floor(storage.now())
        storage.advance(60)
        assert storage.execute(CronFire("a", start, start + 60)).outcome == CRON_FIRED
        storage.advance(5)
        reply = _register(storage, "n2", a="A2")
        assert reply.changed == ("a",) and reply.unknown == ("b",)
        state = _state(storage, "a")
        assert (state.definition, state.node, state.last_tick) == ("A2", "n2", start + 60)
        assert state.registered_at == storage.now()
        assert _register(storage, "n1", a="A2", b="B").changed == ()

    def test_cron_fire_is_a_compare_and_set(self, storage: _Harness) -> None:
        _register(storage, "n1", m="M")
        start = math.floor(storage.now())
        tick = start + 60
        storage.advance(61)
        first = storage.execute(CronFire("m", start, tick, (_job("m", tick),)))
        assert first.outcome == CRON_FIRED and first.last_tick == tick
        (job_id,) = first.ids
        again = storage.execute(CronFire("m", start, tick, (_job("m", tick),)))
        assert (again.outcome, again.last_tick, again.ids) == (CRON_STALE, tick, ())
        assert first.now == again.now == storage.now()
        (job,) = storage.execute(GetJobs((job_id,))).jobs
        assert job is not None and job.idempotency_key == f"cron:m:{tick}"
        assert _state(storage, "m").last_job == job_id

    def test_cron_fire_several_ticks_at_once(self, storage: _Harness) -> None:
        _register(storage, "m", m="M")
        start = math.floor(storage.now())
        jobs = tuple(_job("m", start + 60 * k) for k in (1, 2, 3))
        storage.advance(180)
        reply = storage.execute(CronFire("m", start, start + 180, jobs))
        assert reply.outcome == CRON_FIRED and len(set(reply.ids)) == 3
        assert _state(storage, "m").last_job == reply.ids[-1]

    def test_cron_fire_of_an_unknown_entry(self, storage: _Harness) -> None:
        reply = storage.execute(CronFire("nope", 0, 60, (_job("nope", 60),)))
        assert (reply.outcome, reply.last_tick, reply.ids) == (CRON_MISSING, None, ())

    def test_cron_fire_of_a_tick_after_storage_now_is_early(self, storage: _Harness) -> None:
        _register(storage, "n1", e="E")
        start = math.floor(storage.now())
        storage.advance(59)
        early = storage.execute(CronFire("e", start, start + 60, (_job("e", start + 60),)))
        assert (early.outcome, early.last_tick, early.ids) == (CRON_EARLY, start, ())
        assert early.now == storage.now()
        storage.advance(1)
        fired = storage.execute(CronFire("e", start, start + 60, (_job("e", start + 60),)))
        assert fired.outcome == CRON_FIRED

    def test_cron_paused_entry_passes_ticks_unfired_until_resumed(
        self, storage: _Harness
    ) -> None:
        _register(storage, "n1", p="P")
        start = math.floor(storage.now())
        assert storage.execute(CronSetPaused("p", True)).found
        storage.advance(120)
        paused = storage.execute(CronFire("p", start, start + 60, (_job("p", start + 60),)))
        assert (paused.outcome, paused.last_tick, paused.ids) == (CRON_PAUSED, start + 60, ())
        state = _register(storage, "n2", p="P").states[0]
        assert state.paused and state.last_tick == start + 60  # held across registrations
        assert storage.execute(CronSetPaused("p", False)).found
        fired = storage.execute(CronFire("p", start + 60, start + 120,
                                         (_job("p", start + 120),)))
        assert fired.outcome == CRON_FIRED and not _state(storage, "p").paused
        assert not storage.execute(CronSetPaused("nope", True)).found

    def test_cron_list_is_sorted_by_name(self, storage: _Harness) -> None:
        _register(storage, "n1", zeta="Z", alpha="A", mid="M")
        names = [e.name for e in storage.execute(CronList()).states]
        assert names == ["alpha", "mid", "zeta"]
