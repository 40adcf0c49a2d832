"""The Broker's cron translation, without trio: client cron requests to storage's cron
block and back (the end-to-end path is tests/test_cli_cron.py)."""

from __future__ import annotations

import itertools

from gotask import _protocol as proto
from gotask._app import App
from gotask._errors import CronEntryNotFound, RemoteProtocolError
from gotask._job import JobRecord
from gotask.actors._broker_core import BrokerCore
from gotask.actors._broker_effects import Answer, Call, CallDone, Received, Refuse, Target
from gotask.actors.storage import base as storage
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime.message import Address, Envelope, Ok

SELF = Address("n1", "broker")
CLIENT = Address("c1", "$call")
NOW = 1_800_000_000.0

app = App("broker-cron-tests")


@app.task(name="report", queue="reports", max_attempts=4)
def report(day: str = "") -> None: ...


app.add_cron("nightly", "report", "30 2 * * *", zone="Europe/Paris", kwargs={"day": "x"},
             priority=9)


def _core() -> BrokerCore:
    ids = itertools.count(1)
    return BrokerCore(app, SELF, lambda: f"id{next(ids):024d}")


def _serve(core: BrokerCore, store: MemoryStorageCore, msg: object) -> list[object]:
    """Receive `msg`, apply every storage call at once; the final effects."""
    env = Envelope(SELF, CLIENT, 1, msg)
    effects = core.handle(Received(env), NOW)
    while len(effects) == 1 and isinstance(effects[0], Call):
        call = effects[0]
        assert call.target is Target.STORAGE
        effects = core.handle(CallDone(call.key, store.handle(call.msg, NOW)), NOW)
    return list(effects)


def test_list_joins_storage_with_the_app_and_the_last_jobs_state() -> None:
    store = MemoryStorageCore()
    entry = app.cron_entries()[0]
    store.handle(storage.CronRegister("n2", (storage.CronDef("nightly", entry.definition()),
                                             storage.CronDef("gone", "old"))), NOW - 86_400)
    (answer,) = _serve(_core(), store, proto.RunCron("nightly"))
    assert isinstance(answer, Answer) and isinstance(answer.msg, proto.RunCronReply)
    (job,) = store.handle(storage.GetJobs((answer.msg.job_id,)), NOW).jobs
    assert isinstance(job, JobRecord)
    assert (job.task, job.queue, job.priority, job.max_attempts, job.idempotency_key) == (
        "report", "reports", 9, 4, None)
    (listing,) = _serve(_core(), store, proto.ListCron())
    assert isinstance(listing, Answer) and isinstance(listing.msg, proto.CronListing)
    gone, nightly = listing.msg.entries
    assert (gone.name, gone.declared, gone.current, gone.next_tick) == ("gone", False, False,
                                                                         None)
    assert (nightly.schedule, nightly.zone, nightly.declared, nightly.current) == (
        "30 2 * * *", "Europe/Paris", True, True)
    assert nightly.next_tick == entry.next_tick(nightly.last_tick)
    assert nightly.last_job is None and nightly.last_job_state is None


def test_pause_unknown_names_and_unexpected_replies() -> None:
    store = MemoryStorageCore()
    (refused,) = _serve(_core(), store, proto.PauseCron("nightly", True))
    assert isinstance(refused, Refuse) and isinstance(refused.error, CronEntryNotFound)
    store.handle(storage.CronRegister("n1", (storage.CronDef("nightly", "d"),)), NOW)
    (ok,) = _serve(_core(), store, proto.PauseCron("nightly", True))
    assert isinstance(ok, Answer) and ok.msg == Ok()
    assert store.handle(storage.CronList(), NOW).states[0].paused
    (refused,) = _serve(_core(), store, proto.RunCron("nope"))
    assert isinstance(refused, Refuse) and "no cron entry 'nope'" in str(refused.error)
    core = _core()
    (call,) = core.handle(Received(Envelope(SELF, CLIENT, 2, proto.ListCron())), NOW)
    assert isinstance(call, Call)
    (bad,) = core.handle(CallDone(call.key, storage.CountJobsReply(())), NOW)
    assert isinstance(bad, Refuse) and isinstance(bad.error, RemoteProtocolError)
