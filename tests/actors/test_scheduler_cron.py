"""The Scheduler's cron duties, driven against a real memory storage core.

Several SchedulerCores ("nodes"), each with its own skewed monotonic clock, share one
storage whose clock is the only one that counts; every Call is applied to the storage
core at once. The checks: each tick fires exactly once across the nodes, misfire
policies after an outage, pause, "early" with a node whose clock runs ahead.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Any

import attrs

from gotask import App
from gotask.actors._effects import Call, Called, CallFailed, Effect, Log, Tick
from gotask.actors.scheduler import SchedulerCore, cron_duties
from gotask.actors.storage.base import (
    CRON_FIRED,
    CronFire,
    CronFireReply,
    CronList,
    CronSetPaused,
    GetJobs,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime import Address

STORE = Address("s", "storage")
START = 1_800_000_000.0 - 1_800_000_000.0 % 3600 + 30  # half a minute past an hour


def _app(**options: Any) -> App:
    app = App("t")

    @app.task(name="beat", queue="cron", max_attempts=2)
    def beat(n: int = 0) -> None: ...

    app.add_cron("minutely", "beat", "* * * * *", kwargs={"n": 1}, **options)
    app.add_cron("hourly", "beat", "0 * * * *", **options)
    return app


@attrs.define
class Cluster:
    """One storage, its clock, and nodes with clock skews; every fire is recorded."""

    app: App
    storage: MemoryStorageCore = attrs.Factory(MemoryStorageCore)
    now: float = START
    nodes: dict[str, tuple[SchedulerCore, float]] = attrs.Factory(dict)
    fired: Counter[tuple[str, int]] = attrs.Factory(Counter)
    logs: list[str] = attrs.Factory(list)
    ids: itertools.count[int] = attrs.Factory(itertools.count)

    def start(self, name: str, skew: float) -> None:
        core = SchedulerCore(STORE, interval_s=3600.0)
        core.cron = cron_duties(self.app, name, STORE, lambda: f"job-{next(self.ids)}",
                                core.timers)
        self.nodes[name] = (core, skew)

    def run(self, seconds: int, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.now += step
            for core, skew in list(self.nodes.values()):
                local = self.now + skew
                self._apply(core, core.handle(Tick(local), local), local)

    def _apply(self, core: SchedulerCore, effects: list[Effect], local: float) -> None:
        for effect in effects:
            if isinstance(effect, Log):
                self.logs.append(effect.text)
            elif isinstance(effect, Call):
                reply = self.storage.handle(effect.msg, self.now)
                if isinstance(reply, CronFireReply) and reply.outcome == CRON_FIRED:
                    for job_id in reply.ids:
                        (job,) = self.storage.handle(GetJobs((job_id,)), self.now).jobs
                        assert job is not None and job.idempotency_key is not None
                        _, name, tick = job.idempotency_key.split(":")
                        self.fired[(name, int(tick))] += 1
                self._apply(core, core.handle(Called(effect.tag, reply), local), local)


def _expected(name: str, first: float, last: float, step: int) -> set[tuple[str, int]]:
    tick = int(first) - int(first) % step + step
    return {(name, t) for t in range(tick, int(last) + 1, step)}


def test_three_skewed_nodes_fire_every_tick_exactly_once() -> None:
    cluster = Cluster(_app())
    for name, skew in (("a", -40.0), ("b", 0.0), ("c", 25.0)):
        cluster.start(name, skew)
    cluster.run(3 * 3600 + 120)
    assert set(cluster.fired.values()) == {1}
    want = _expected("minutely", START, cluster.now, 60) | _expected("hourly", START,
                                                                     cluster.now, 3600)
    assert set(cluster.fired) == want


def test_jobs_take_task_defaults_args_and_the_tick_key() -> None:
    cluster = Cluster(_app())
    cluster.start("a", 0.0)
    cluster.run(60)
    (state,) = [s for s in cluster.storage.handle(CronList(), cluster.now).states
                if s.name == "minutely"]
    assert state.last_job is not None
    (job,) = cluster.storage.handle(GetJobs((state.last_job,)), cluster.now).jobs
    assert job is not None
    assert (job.task, job.queue, job.max_attempts) == ("beat", "cron", 2)
    assert job.args == b"\x92\x90\x81\xa1n\x01"  # [[], {"n": 1}]
    assert job.idempotency_key == f"cron:minutely:{state.last_tick}"


def test_a_node_running_ahead_is_told_early_and_fires_on_the_storage_clock() -> None:
    cluster = Cluster(_app())
    cluster.start("fast", 0.0)
    cluster.run(2)
    core, _ = cluster.nodes["fast"]
    cluster.nodes["fast"] = (core, 20.0)  # its clock jumps 20 s ahead after registering
    cluster.run(30)  # storage is at START+32: minute START+30 has come
    assert set(cluster.fired) == {("minutely", int(START) + 30)}
    fires = [t for (_, t) in cluster.fired]
    assert all(t <= cluster.now for t in fires)


def _outage(misfire: str, **options: Any) -> Cluster:
    cluster = Cluster(_app(misfire=misfire, **options))
    cluster.start("a", 0.0)
    cluster.run(60)
    assert cluster.fired == Counter({("minutely", int(START) + 30): 1})
    cluster.nodes.clear()  # every node down for ten minutes
    cluster.now += 600
    cluster.fired.clear()
    cluster.start("b", 5.0)
    cluster.run(2)
    return cluster


def test_misfire_once_fires_one_job_for_the_missed_ticks() -> None:
    cluster = _outage("once")
    assert cluster.fired == Counter({("minutely", int(START) + 630): 1})


def test_misfire_all_fires_every_missed_tick_up_to_the_bound() -> None:
    cluster = _outage("all", misfire_limit=4)
    ticks = sorted(t for (n, t) in cluster.fired if n == "minutely")
    assert ticks == [int(START) + 30 + 60 * k for k in (7, 8, 9, 10)]


def test_misfire_skip_fires_only_a_tick_within_grace() -> None:
    cluster = _outage("skip", grace_s=1)
    assert cluster.fired == Counter()
    cluster.run(60)
    assert cluster.fired == Counter({("minutely", int(START) + 690): 1})


def test_a_paused_entry_passes_its_ticks_until_resumed() -> None:
    cluster = Cluster(_app())
    cluster.start("a", 0.0)
    cluster.run(2)
    cluster.storage.handle(CronSetPaused("minutely", True), cluster.now)
    cluster.run(180)
    assert not [k for k in cluster.fired if k[0] == "minutely"]
    cluster.storage.handle(CronSetPaused("minutely", False), cluster.now)
    cluster.run(60)
    assert [k for k in cluster.fired if k[0] == "minutely"] == [
        ("minutely", int(START) + 210)]


def test_changed_and_removed_entries_are_reported_and_the_newest_wins() -> None:
    old = Cluster(_app())
    old.start("a", 0.0)
    old.run(2)
    new_app = App("t")

    @new_app.task(name="beat")
    def beat(n: int = 0) -> None: ...

    new_app.add_cron("minutely", "beat", "*/5 * * * *")
    old.app = new_app
    old.start("b", 0.0)
    old.run(2)
    text = "\n".join(old.logs)
    assert "differed, replaced by this node's: minutely" in text
    assert "not declared by this app" in text and "hourly" in text
    states = {s.name: s for s in old.storage.handle(CronList(), old.now).states}
    assert states["minutely"].node == "b"
    assert states["minutely"].definition == new_app.cron_entries()[0].definition()


def test_a_failed_fire_is_retried_as_a_compare_and_set() -> None:
    core = SchedulerCore(STORE, interval_s=3600.0)
    core.cron = cron_duties(_app(), "a", STORE, lambda: "job-1", core.timers)
    (register,) = core.handle(Tick(0.0), 0.0)
    assert isinstance(register, Call)
    storage = MemoryStorageCore()
    reply = storage.handle(register.msg, START)
    assert core.handle(Called(register.tag, reply), 0.0) == []
    effects = core.handle(Tick(31.0), 31.0)
    (fire,) = [e for e in effects if isinstance(e, Call) and isinstance(e.msg, CronFire)]
    failed = core.handle(CallFailed(fire.tag, "CallTimeout", "no answer", False), 31.5)
    assert [e.level for e in failed if isinstance(e, Log)] == [logging.WARNING]
    (again,) = [e for e in core.handle(Tick(33.0), 33.0) if isinstance(e, Call)]
    assert again.msg.expected == fire.msg.expected and again.msg.tick == fire.msg.tick


def test_an_entry_storage_lost_is_registered_again_with_one_timer() -> None:
    cluster = Cluster(_app())
    cluster.start("a", 0.0)
    cluster.run(60)
    cluster.storage = MemoryStorageCore()  # the store restarted empty
    cluster.fired.clear()
    cluster.run(180)
    assert any("not in storage; registering it again" in line for line in cluster.logs)
    core, _ = cluster.nodes["a"]
    assert sorted(d for _, d in core.timers if d.startswith("cron:")) == [
        "cron:hourly", "cron:minutely"]
    assert set(cluster.fired.values()) == {1} and len(cluster.fired) >= 2
