"""The bridge from asyncio handlers into trio, without gRPC: results, errors, streams,
cancellation both ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gotask.runtime._aiothread import AioThread
from gotask.web._grpc_bridge import Bridge, Emit


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[AioThread, Bridge]]:
    aio = AioThread("bridge-test")
    bridge = Bridge(aio, items_max=4)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.serve)
            yield aio, bridge
            nursery.cancel_scope.cancel()
    finally:
        await aio.aclose()


async def double(x: int) -> int:
    await trio.sleep(0)
    return 2 * x


async def fail() -> None:
    raise LookupError("not here")


async def test_calls_cross_in_batches_with_results_and_errors(
        bridge: tuple[AioThread, Bridge]) -> None:
    aio, b = bridge

    async def many() -> list[Any]:
        return await asyncio.gather(*(b.run(double, i) for i in range(100)),
                                    b.run(fail), return_exceptions=True)

    results = await aio.call(many)
    assert results[:100] == [2 * i for i in range(100)]
    assert isinstance(results[100], LookupError) and str(results[100]) == "not here"
    assert b.statistics().running == 0


async def test_a_cancelled_handler_cancels_its_trio_task(
        bridge: tuple[AioThread, Bridge]) -> None:
    aio, b = bridge
    started, stopped = trio.Event(), trio.Event()

    async def forever() -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async def handler() -> str:
        task = asyncio.ensure_future(b.run(forever))
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert await aio.call(handler) == "cancelled"
    with trio.fail_after(5):
        await stopped.wait()
    assert started.is_set()
    with trio.fail_after(5):
        while b.statistics().running:
            await trio.sleep(0.01)


async def test_a_stream_yields_in_order_then_ends(bridge: tuple[AioThread, Bridge]) -> None:
    aio, b = bridge

    async def count(emit: Emit, n: int) -> None:
        for i in range(n):
            emit(i)
            await trio.sleep(0.001)

    async def read() -> list[int]:
        return [i async for i in b.stream(count, 10)]

    assert await aio.call(read) == list(range(10))


async def test_a_slow_reader_gets_the_newest_items(bridge: tuple[AioThread, Bridge]) -> None:
    aio, b = bridge

    async def burst(emit: Emit) -> None:
        for i in range(100):
            emit(i)

    async def read() -> list[int]:
        return [i async for i in b.stream(burst)]

    # All 100 are emitted without a checkpoint, so they cross in one batch: 4 are kept.
    assert await aio.call(read) == [96, 97, 98, 99]


async def test_a_stream_error_reaches_the_reader(bridge: tuple[AioThread, Bridge]) -> None:
    aio, b = bridge

    async def broken(emit: Emit) -> None:
        emit("first")
        raise ValueError("broken")

    async def read() -> list[Any]:
        got: list[Any] = []
        try:
            async for item in b.stream(broken):
                got.append(item)
        except ValueError as exc:
            got.append(str(exc))
        return got

    assert await aio.call(read) == ["first", "broken"]
