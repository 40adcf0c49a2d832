"""Group commit of concurrent enqueues (gotask/_client_batch.py): few messages, and
each caller still gets its own id or its own error."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from gotask._client_batch import FLUSHERS, EnqueueBatcher
from gotask._errors import ConnectionLost, RemoteActorError, RemoteProtocolError, TaskNotFound
from gotask._protocol import Enqueue, JobSpec
from gotask.client import AsyncClient

from .test_client import FakeBroker, start_fake


class FakeSend:
    """Answers "id-<task>" per item; refuses, fails or holds messages when told to."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, ...]] = []
        self.fail_with: BaseException | None = None
        self.gate: trio.Event | None = None

    async def __call__(self, items: tuple[JobSpec, ...]) -> list[str]:
        self.messages.append(tuple(item.task for item in items))
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(0.01)
        if self.fail_with is not None:
            raise self.fail_with
        for index, item in enumerate(items):
            if item.task.startswith("bad"):
                raise TaskNotFound(f"item {index}: unknown task {item.task!r}")
        return [f"id-{item.task}" for item in items]


def item(task: str) -> JobSpec:
    return JobSpec(task, b"\x92\x90\x80")


async def submit_all(batcher: EnqueueBatcher, tasks: list[str]) -> dict[str, Any]:
    """Submit every task at once; map each to its id or its error."""
    got: dict[str, Any] = {}

    async def one(task: str) -> None:
        try:
            got[task] = await batcher.submit(item(task))
        except Exception as exc:
            got[task] = exc

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(one, task)
    return got


@pytest.fixture
async def batcher_and_send(nursery: trio.Nursery) -> tuple[EnqueueBatcher, FakeSend]:
    send = FakeSend()
    batcher = EnqueueBatcher(send)
    nursery.start_soon(batcher.run)
    return batcher, send


async def test_a_lone_caller_is_sent_at_once(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    with trio.fail_after(1):
        assert await batcher.submit(item("a")) == "id-a"
    assert send.messages == [("a",)]


async def test_concurrent_callers_share_messages_and_get_their_own_ids(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    tasks = [f"t{i}" for i in range(100)]
    got = await submit_all(batcher, tasks)
    assert got == {task: f"id-{task}" for task in tasks}
    assert len(send.messages) <= FLUSHERS
    assert sorted(t for message in send.messages for t in message) == sorted(tasks)


async def test_a_refused_message_is_resent_one_job_each(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    tasks = ["good1", "bad", "good2", "good3"]
    got = await submit_all(batcher, tasks)
    assert isinstance(got["bad"], TaskNotFound)
    assert {t: got[t] for t in tasks if t != "bad"} == {
        "good1": "id-good1", "good2": "id-good2", "good3": "id-good3"}
    refused = [m for m in send.messages if "bad" in m and len(m) > 1]
    assert refused
    assert all((task,) in send.messages for task in refused[0])  # each sent again alone


async def test_a_relayed_value_error_is_also_a_refusal(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    send.fail_with = RemoteActorError("ValueError", "item 1: queue must be 1-128 characters")
    got = await submit_all(batcher, ["a", "b"])
    assert all(isinstance(v, RemoteActorError) for v in got.values())
    assert sorted(m for m in send.messages if len(m) == 1) == [("a",), ("b",)]


async def test_other_failures_reach_every_caller_and_nothing_is_resent(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    send.fail_with = ConnectionLost("lost with a request in flight")
    tasks = [f"t{i}" for i in range(20)]
    got = await submit_all(batcher, tasks)
    assert all(isinstance(v, ConnectionLost) for v in got.values())
    assert sum(len(m) for m in send.messages) == len(tasks)


async def test_an_answer_with_the_wrong_count_is_a_protocol_error(nursery: trio.Nursery) -> None:
    async def short(items: tuple[JobSpec, ...]) -> list[str]:
        return ["only-one"]

    batcher = EnqueueBatcher(short)
    nursery.start_soon(batcher.run)
    got = await submit_all(batcher, ["a", "b", "c"])
    assert any(isinstance(v, RemoteProtocolError) for v in got.values())


async def test_a_caller_cancelled_before_sending_withdraws_its_job(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    send.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        for task in ("first", "second"):  # both flushers busy, held at the gate
            nursery.start_soon(batcher.submit, item(task))
        await trio.sleep(0.05)
        with trio.move_on_after(0.05):
            await batcher.submit(item("withdrawn"))
        send.gate.set()
    assert await batcher.submit(item("later")) == "id-later"
    assert all("withdrawn" not in message for message in send.messages)


async def test_closing_fails_the_queued_callers(
    batcher_and_send: tuple[EnqueueBatcher, FakeSend]
) -> None:
    batcher, send = batcher_and_send
    send.gate = trio.Event()
    errors: list[BaseException] = []

    async def queued() -> None:
        try:
            await batcher.submit(item("queued"))
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for task in ("first", "second"):
            nursery.start_soon(batcher.submit, item(task))
        await trio.sleep(0.05)
        nursery.start_soon(queued)
        await trio.sleep(0.05)
        batcher.fail_all(trio.ClosedResourceError("the client is closed"))
        send.gate.set()
    assert len(errors) == 1


async def test_client_enqueues_from_many_tasks_share_messages(fake: FakeBroker) -> None:
    got: dict[str, Any] = {}
    async with AsyncClient([fake.address]) as client:

        async def one(task: str, n: int) -> None:
            try:
                got[f"{task}{n}"] = await client.enqueue(task, n, 1)
            except TaskNotFound as exc:
                got[f"{task}{n}"] = exc

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(one, "add", n)
            nursery.start_soon(one, "nope", 0)
        assert await client.wait(got["add7"], timeout_s=5) == 8
    assert isinstance(got.pop("nope0"), TaskNotFound)
    assert len(set(got.values())) == 40
    enqueues = [m for m in fake.received if isinstance(m, Enqueue)]
    assert sum(len(m.jobs) for m in enqueues) >= 41
    assert len(enqueues) < 41


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBroker:
    return await start_fake(nursery)
