"""Issue 22, item 5 of the hostile test: the memory backend had no byte bound.

1,000 jobs of 500 KB added 479 MiB in 1.3 s; only a job count was limited. The memory
core now counts the bytes of job data it holds and refuses an enqueue past `bytes_max`
with `StorageFull`, whole, and gives the room back when jobs are purged.
"""

from __future__ import annotations

import pytest

from gotask._errors import StorageFull
from gotask._job import NewJob
from gotask.actors.storage.base import EnqueueJobs, PurgeExpired
from gotask.actors.storage.memory import MemoryStorageCore

from ..storage.contract import ack, lease, new_job
from ..storage.test_memory import START_S, MemoryHarness

BIG = b"\xc4" + b"x" * 500_000


def _big(**fields: object) -> NewJob:
    job = new_job(**fields)
    return NewJob(job.id, job.task, job.queue, BIG, result_ttl_s=0.0)


def test_the_default_bound_refuses_the_reported_flood() -> None:
    core = MemoryStorageCore()
    with pytest.raises(StorageFull, match="bytes_max=1073741824"):
        for _ in range(3000):  # 3000 x 500 KB = 1.5 GB
            core.handle(EnqueueJobs((_big(),)), START_S)
    assert core.bytes_held <= core.bytes_max


def test_enqueue_past_bytes_max_is_refused_whole_and_purges_give_room_back() -> None:
    harness = MemoryHarness(MemoryStorageCore(bytes_max=1_100_000))
    harness.execute(EnqueueJobs((_big(), _big())))
    with pytest.raises(StorageFull, match="more would pass bytes_max=1100000"):
        harness.execute(EnqueueJobs((_big(),)))
    assert len(harness.core._jobs) == 2
    for job in lease(harness, limit=2):
        assert ack(harness, job) == "ok"
    harness.advance(1.0)
    assert harness.execute(PurgeExpired()).purged == 2
    assert harness.core.bytes_held == 0
    assert harness.execute(EnqueueJobs((_big(),))).created == (True,)


def test_results_count_toward_the_bound() -> None:
    harness = MemoryHarness(MemoryStorageCore())
    harness.execute(EnqueueJobs((new_job(),)))
    before = harness.core.bytes_held
    (job,) = lease(harness)
    assert ack(harness, job, result=b"\xc4" + b"r" * 1000) == "ok"
    # The result's 1001 bytes, plus the attempt's small history entry.
    assert before + 1001 <= harness.core.bytes_held <= before + 1001 + 256
