"""The memory backend: the storage contract, the stateful test, and its own limits."""

from __future__ import annotations

from typing import TypeVar

import attrs
import pytest

from gotask._errors import IllegalTransition, StorageFull
from gotask._job import JobRecord, JobState
from gotask.actors.storage import base
from gotask.actors.storage._memory_state import _evolve
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    Command,
    EnqueueJobs,
    GetJobs,
    LeaseJobs,
    PurgeExpired,
    QueueWeight,
    RegisterNode,
)
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.runtime.message import REGISTRY, tag_of

from .contract import StorageContract, make_state_machine, new_job

R = TypeVar("R")
START_S = 1_700_000_000.0


@attrs.define
class MemoryHarness:
    """A memory core and a fake storage clock that moves only when told."""

    core: MemoryStorageCore = attrs.Factory(MemoryStorageCore)
    clock: float = START_S

    def execute(self, cmd: Command[R]) -> R:
        return self.core.handle(cmd, self.clock)

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> MemoryHarness:
        return MemoryHarness()


TestMemoryStateMachine = make_state_machine(MemoryHarness)


def test_every_command_and_reply_is_a_registered_message() -> None:
    classes = [getattr(base, name) for name in base.__all__]
    # The contract's messages are defined in base's private modules and re-exported by it.
    package = base.__name__.rpartition(".")[0]
    messages = [c for c in classes if attrs.has(c) and c.__module__.startswith(package)]
    assert len(messages) == 61
    for cls in messages:
        tag = tag_of(cls)
        assert tag.startswith("s.") and REGISTRY[tag] is cls


def test_handle_rejects_what_is_not_a_command() -> None:
    with pytest.raises(TypeError, match="not a storage command: str"):
        MemoryStorageCore().handle("lease", START_S)  # type: ignore[arg-type]


def test_enqueue_past_jobs_max_is_refused_whole() -> None:
    core = MemoryStorageCore(jobs_max=3)
    core.handle(EnqueueJobs((new_job(), new_job())), START_S)
    with pytest.raises(StorageFull, match="2 more would pass jobs_max=3"):
        core.handle(EnqueueJobs((new_job(), new_job())), START_S)
    assert core.handle(EnqueueJobs((new_job(),)), START_S).created == (True,)


def test_register_past_nodes_max_is_refused() -> None:
    core = MemoryStorageCore(nodes_max=1)
    core.handle(RegisterNode("n1", {}, 10.0), START_S)
    core.handle(RegisterNode("n1", {}, 10.0), START_S)
    with pytest.raises(StorageFull, match="nodes_max=1"):
        core.handle(RegisterNode("n2", {}, 10.0), START_S)


def test_moves_only_along_the_transition_table() -> None:
    core = MemoryStorageCore()
    job = new_job()
    core.handle(EnqueueJobs((job,)), START_S)
    with pytest.raises(IllegalTransition, match=f"job {job.id}: .*queued -> succeeded"):
        core._move(core._jobs[job.id], JobState.SUCCEEDED)


def test_records_handed_out_are_snapshots_with_the_current_state() -> None:
    core = MemoryStorageCore()
    [job_id] = core.handle(EnqueueJobs((new_job(),)), START_S).ids
    queued = core.handle(GetJobs((job_id,)), START_S).jobs[0]
    [leased] = core.handle(LeaseJobs("n1", (QueueWeight("default"),), 1, 30.0), START_S).jobs
    core.handle(AckJobs((AckItem(job_id, leased.attempt, b"r"),)), START_S + 1)
    done = core.handle(GetJobs((job_id,)), START_S + 1).jobs[0]
    assert queued is not None and done is not None
    assert (queued.state, queued.attempt, queued.result) == ("queued", 0, None)
    assert (leased.state, leased.attempt, leased.lease_node) == ("active", 1, "n1")
    assert (done.state, done.result, done.finished_at) == ("succeeded", b"r", START_S + 1)
    assert type(done.state) is str and type(done) is JobRecord


def test_evolve_matches_attrs_evolve_for_every_field() -> None:
    record = JobRecord("j", "t", "q", b"a", 0, "queued", 1.0, 1.0, 3, 60.0)
    for i, field in enumerate(attrs.fields(JobRecord)):
        changes = {field.name: f"v{i}"}
        assert _evolve(record, **changes) == attrs.evolve(record, **changes)
    assert record == JobRecord("j", "t", "q", b"a", 0, "queued", 1.0, 1.0, 3, 60.0)


def test_indexes_stay_proportional_to_live_jobs() -> None:
    core, now = MemoryStorageCore(), START_S
    lease = LeaseJobs("n1", (QueueWeight("default"),), 64, 30.0)
    for _ in range(200):
        core.handle(EnqueueJobs(tuple(new_job(result_ttl_s=0.0) for _ in range(64))), now)
        jobs = core.handle(lease, now).jobs
        core.handle(AckJobs(tuple(AckItem(j.id, j.attempt, b"") for j in jobs)), now)
        core.handle(PurgeExpired(limit=64), now)
        now += 0.001
    assert not core._jobs
    assert len(core._leases.items) <= 2 * 1024 + 64
    assert len(core._expiry.items) <= 2 * 1024 + 64
    assert not core._queues
