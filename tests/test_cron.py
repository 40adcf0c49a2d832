"""Cron entries: declaration and refusal at app load, ticks, DST, misfire policies."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from gotask import App
from gotask._cron import CronEntry, cron_key, make_entry

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def _ts(year: int, month: int, day: int, hour: int, minute: int = 0, *,
        zone: ZoneInfo = PARIS, fold: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold).timestamp())


def _local(tick: int, zone: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(tick, zone).isoformat()


def _ticks(entry: CronEntry, after: int, count: int, zone: ZoneInfo) -> list[str]:
    ticks = entry.ticks_after(after)
    return [_local(next(ticks), zone) for _ in range(count)]


def _app() -> App:
    app = App("t")

    @app.task(name="report")
    def report(day: str = "") -> None: ...

    return app


# -- declaring ---------------------------------------------------------------------------


def test_app_cron_decorator_registers_the_task_and_the_entry() -> None:
    app = App("t")

    @app.cron("0 7 * * mon-fri", name="morning", zone="Europe/Paris", queue="reports",
              priority=5)
    def morning() -> None: ...

    @app.cron(every_s=60)
    @app.task(name="tick")
    def tick() -> None: ...

    entry, ticker = app.cron_entries()
    assert entry.name == entry.task == "morning"
    assert ticker.name == ticker.task == "tick" and ticker.every_s == 60
    assert app.get(entry.task).fn is morning
    assert (entry.schedule, entry.zone, entry.queue, entry.priority) == (
        "0 7 * * mon-fri", "Europe/Paris", "reports", 5)


def test_add_cron_with_interval_and_arguments() -> None:
    app = _app()
    entry = app.add_cron("every-5m", "report", every_s=300, kwargs={"day": "x"},
                         misfire="all", misfire_limit=3, jitter_s=10)
    assert (entry.every_s, entry.misfire, entry.misfire_limit) == (300, "all", 3)
    assert app.cron_entries() == [entry]


@pytest.mark.parametrize(("schedule", "options", "message"), [
    ("61 * * * *", {}, r"cron entry 'bad': invalid cron expression '61 \* \* \* \*'"),
    ("not cron", {}, "cron entry 'bad': invalid cron expression"),
    ("0 * * * *", {"zone": "Mars/Olympus"}, "cron entry 'bad': unknown time zone 'Mars/Olympus'"),
    (None, {}, "cron entry 'bad': give exactly one of"),
    ("0 * * * *", {"every_s": 60}, "cron entry 'bad': give exactly one of"),
    (None, {"every_s": 0.5}, "cron entry 'bad': every_s must be a whole number"),
    ("0 * * * *", {"misfire": "never"}, "cron entry 'bad': misfire must be one of"),
    ("0 * * * *", {"misfire_limit": 0}, "cron entry 'bad': misfire_limit"),
    ("0 * * * *", {"jitter_s": -1}, "cron entry 'bad': jitter_s must be"),
])
def test_invalid_entries_are_refused_naming_the_entry(
    schedule: str | None, options: dict[str, object], message: str
) -> None:
    app = _app()
    with pytest.raises(ValueError, match=message):
        app.add_cron("bad", "report", schedule, **options)
    assert app.cron_entries() == []


def test_unknown_task_duplicate_name_unknown_option_and_bad_args_are_refused() -> None:
    app = _app()
    with pytest.raises(ValueError, match="cron entry 'x': unknown task 'nope'"):
        app.add_cron("x", "nope", "* * * * *")
    app.add_cron("x", "report", "* * * * *")
    with pytest.raises(ValueError, match="cron entry 'x' is already declared"):
        app.add_cron("x", "report", "* * * * *")
    with pytest.raises(TypeError, match=r"cron entry 'y': .*colour"):
        app.add_cron("y", "report", "* * * * *", colour="red")
    with pytest.raises(Exception, match="msgpack"):
        app.add_cron("z", "report", "* * * * *", args=(object(),))


def test_definition_changes_with_any_field() -> None:
    a = make_entry("e", "t", schedule="0 * * * *")
    assert a.definition() == make_entry("e", "t", schedule="0 * * * *").definition()
    assert a.definition() != make_entry("e", "t", schedule="5 * * * *").definition()
    assert a.definition() != make_entry("e", "t", schedule="0 * * * *",
                                        args=(1,)).definition()
    assert cron_key("e", 60) == "cron:e:60"


# -- ticks and DST -----------------------------------------------------------------------


def test_interval_ticks_are_epoch_aligned_so_every_node_agrees() -> None:
    entry = make_entry("i", "t", every_s=300)
    ticks = entry.ticks_after(1_000_001)
    assert [next(ticks) for _ in range(3)] == [1_000_200, 1_000_500, 1_000_800]
    assert entry.next_tick(1_000_200) == 1_000_500


def test_paris_spring_forward_skipped_hour_fires_once_after_the_gap() -> None:
    daily = make_entry("d", "t", schedule="30 2 * * *", zone="Europe/Paris")
    assert _ticks(daily, _ts(2025, 3, 29, 12), 2, PARIS) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00"]
    hourly = make_entry("h", "t", schedule="0 * * * *", zone="Europe/Paris")
    assert _ticks(hourly, _ts(2025, 3, 30, 1), 2, PARIS) == [
        "2025-03-30T03:00:00+02:00", "2025-03-30T04:00:00+02:00"]


def test_paris_fall_back_repeated_hour() -> None:
    daily = make_entry("d", "t", schedule="30 2 * * *", zone="Europe/Paris")
    assert _ticks(daily, _ts(2025, 10, 25, 12), 2, PARIS) == [
        "2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"]
    # Asked from inside the repeated hour, the fixed time does not fire a second time.
    second_pass = _ts(2025, 10, 26, 2, 0, fold=1)
    assert _ticks(daily, second_pass, 1, PARIS) == ["2025-10-27T02:30:00+01:00"]
    half_hourly = make_entry("h", "t", schedule="*/30 * * * *", zone="Europe/Paris")
    assert _ticks(half_hourly, _ts(2025, 10, 26, 1, 45), 4, PARIS) == [
        "2025-10-26T02:00:00+02:00", "2025-10-26T02:30:00+02:00",
        "2025-10-26T02:00:00+01:00", "2025-10-26T02:30:00+01:00"]


def test_new_york_transitions() -> None:
    daily = make_entry("d", "t", schedule="30 2 * * *", zone="America/New_York")
    assert _ticks(daily, _ts(2025, 3, 8, 12, zone=NEW_YORK), 2, NEW_YORK) == [
        "2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]
    early = make_entry("e", "t", schedule="30 1 * * *", zone="America/New_York")
    assert _ticks(early, _ts(2025, 11, 1, 12, zone=NEW_YORK), 2, NEW_YORK) == [
        "2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]


def test_utc_is_the_default_zone() -> None:
    entry = make_entry("u", "t", schedule="0 0 * * *")
    assert entry.zone == "UTC"
    assert entry.next_tick(86_400 * 10 + 5) == 86_400 * 11


# -- misfire -----------------------------------------------------------------------------

MINUTELY = "* * * * *"
T0 = 1_800_000_000 - 1_800_000_000 % 60


@pytest.mark.parametrize("misfire", ["skip", "once", "all"])
def test_an_on_time_tick_fires_under_every_policy(misfire: str) -> None:
    entry = make_entry("m", "t", schedule=MINUTELY, misfire=misfire)
    assert entry.due_ticks(T0, T0 + 59) == ([], T0)
    assert entry.due_ticks(T0, T0 + 61) == ([T0 + 60], T0 + 60)


def test_misfire_after_an_outage_of_ten_ticks() -> None:
    now = T0 + 600 + 30
    skip = make_entry("m", "t", schedule=MINUTELY, misfire="skip")
    assert skip.due_ticks(T0, now) == ([T0 + 600], T0 + 600)  # the latest is on time
    assert skip.due_ticks(T0, T0 + 600 + 59, ) == ([T0 + 600], T0 + 600)
    late = make_entry("m", "t", schedule="0 * * * *", misfire="skip", grace_s=60)
    hour = T0 - T0 % 3600
    assert late.due_ticks(hour, hour + 3 * 3600 + 1200) == ([], hour + 3 * 3600)
    once = make_entry("m", "t", schedule=MINUTELY, misfire="once")
    assert once.due_ticks(T0, now) == ([T0 + 600], T0 + 600)
    every = make_entry("m", "t", schedule=MINUTELY, misfire="all", misfire_limit=4)
    assert every.due_ticks(T0, now) == ([T0 + 60 * k for k in (7, 8, 9, 10)], T0 + 600)
    unbounded = make_entry("m", "t", schedule=MINUTELY, misfire="all")
    assert unbounded.due_ticks(T0, now)[0] == [T0 + 60 * k for k in range(1, 11)]


def test_jitter_is_the_same_on_every_node_and_bounded() -> None:
    entry = make_entry("j", "t", schedule=MINUTELY, jitter_s=30)
    delays = {entry.jitter_for(T0 + 60 * k) for k in range(50)}
    assert all(0 <= d < 30 for d in delays) and len(delays) > 40
    assert entry.jitter_for(T0) == make_entry("j", "t", schedule=MINUTELY,
                                              jitter_s=30).jitter_for(T0)
    assert make_entry("j", "t", schedule=MINUTELY).jitter_for(T0) == 0.0


def test_job_options_are_checked() -> None:
    app = _app()
    with pytest.raises(TypeError, match=r"cron entry 'o': unknown job option.*retry"):
        app.add_cron("o", "report", "* * * * *", options={"retry": None})
    with pytest.raises(ValueError, match="cron entry 'o': max_attempts"):
        app.add_cron("o", "report", "* * * * *", options={"max_attempts": 0})
    with pytest.raises(ValueError, match="cron entry 'o': invalid queue name"):
        app.add_cron("o", "report", "* * * * *", queue="no spaces")
    assert app.add_cron("o", "report", "* * * * *", options={"timeout_s": 5}).options == {
        "timeout_s": 5}
