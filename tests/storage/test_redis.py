"""The Redis backend: the storage contract, the stateful test, the actor, a two-node cluster.

Runs against the Redis at `GOTASK_TEST_REDIS_URL` (default redis://127.0.0.1:6379/15);
every harness uses a prefix of its own and deletes its keys when closed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import msgpack
import pytest
import redis
import trio

from gotask._app import App, pack_args
from gotask._errors import ConfigError, StorageError, StorageUnavailable
from gotask._job import LeaseToken
from gotask._messages import (
    BROKER,
    STORAGE,
    WORKERS,
    CancelRunning,
    JobChanged,
    LeaseWait,
    WatchJobs,
)
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import open_server
from gotask.actors.storage._redis_backend import RedisBackend, RedisSettings, redact
from gotask.actors.storage._redis_codec import Leased, WatchRead
from gotask.actors.storage.base import (
    AckItem,
    AckJobs,
    CancelJobs,
    Command,
    CountJobs,
    CountJobsReply,
    EnqueueJobs,
    EnqueueReply,
    GetJobs,
    LeaseJobs,
    ListNodes,
    QueueWeight,
    RegisterNode,
    SetQueuePaused,
)
from gotask.actors.storage.redis import delete_prefix, open_redis_storage, run_redis_storage
from gotask.config import NodeConfig
from gotask.runtime import Address, open_node

from ._cluster_pause import pause_holds_on_both_nodes
from .contract import StorageContract, make_state_machine, new_job
from .shell_contract import Actor, StorageShellContract

R = TypeVar("R")
START_S = 1_700_000_000.0
REDIS_URL = os.environ.get("GOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_prefixes = itertools.count(1)


def _unreachable() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"no Redis at {REDIS_URL} ({exc}); set GOTASK_TEST_REDIS_URL"
    return None


if (_reason := _unreachable()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def unique_url(name: str = "t") -> str:
    """The test Redis with a prefix no other test (or process) uses."""
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix=gotask-test-{name}-{os.getpid()}-{next(_prefixes)}"


class RedisHarness:
    """The Redis backend in a loop of its own, with a pinned storage clock."""

    def __init__(self) -> None:
        self.url = unique_url()
        self.clock = START_S
        self.loop = asyncio.new_event_loop()
        self.backend = RedisBackend(RedisSettings.from_url(self.url))
        self.loop.run_until_complete(self.backend.open(subscribe=False))

    def execute(self, cmd: Command[R]) -> R:
        (reply,) = self.loop.run_until_complete(self.backend.execute([cmd], self.clock))
        if isinstance(reply, Exception):
            raise reply
        return reply.reply if isinstance(reply, Leased) else reply  # type: ignore[no-any-return]

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def now(self) -> float:
        return self.clock

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()
        delete_prefix(self.url)


class TestRedisStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[RedisHarness]:
        harness = RedisHarness()
        yield harness
        harness.close()


TestRedisStateMachine = make_state_machine(RedisHarness)


# -- the backend's own behaviour ------------------------------------------------------------


@pytest.fixture
def harness() -> Iterator[RedisHarness]:
    h = RedisHarness()
    yield h
    h.close()


def test_times_keep_microseconds(harness: RedisHarness) -> None:
    harness.clock = START_S + 0.123456
    job = new_job(delay_s=0.1)
    harness.execute(EnqueueJobs((job,)))
    (rec,) = harness.execute(GetJobs((job.id,))).jobs
    assert rec is not None
    assert (rec.created_at, rec.due_at) == (START_S + 0.123456, START_S + 0.123456 + 0.1)


def test_values_shared_by_a_reply_keep_their_types(harness: RedisHarness) -> None:
    from gotask._job import NewJob

    jobs = [NewJob(f"same{i}", "3", "3", b"\x90", priority=3, max_attempts=3) for i in range(3)]
    harness.execute(EnqueueJobs(tuple(jobs)))
    leased = harness.execute(LeaseJobs("3", (QueueWeight("3"),), 3, 3.0)).jobs
    for job in leased:
        assert (job.task, job.queue, job.lease_node) == ("3", "3", "3")
        assert (job.priority, job.max_attempts, job.attempt) == (3, 3, 1)
        assert all(type(v) is int for v in (job.priority, job.max_attempts, job.attempt))


def test_redis_time_is_the_clock_when_none_is_pinned(harness: RedisHarness) -> None:
    job = new_job()
    loop, backend = harness.loop, harness.backend
    loop.run_until_complete(backend.execute([EnqueueJobs((job,))], None))
    (reply,) = loop.run_until_complete(backend.execute([GetJobs((job.id,))], None))
    seconds, micros = redis.Redis.from_url(REDIS_URL).time()
    server_s = seconds + micros / 1e6
    assert abs(reply.jobs[0].created_at - server_s) < 5


def test_a_lease_reply_equals_what_it_stored_on_redis_time(harness: RedisHarness) -> None:
    # The script returns jobs as read and Python applies the lease: the expiry it adds
    # must be the double Redis stored, for any timeout and any microsecond of TIME.
    from gotask._job import NewJob

    loop, backend = harness.loop, harness.backend
    for timeout_s in (0.1, 30.0, 1 / 3, 86_399.999_999):
        jobs = [NewJob(f"t{timeout_s}-{i}", "task", "default", b"\x90") for i in range(5)]
        loop.run_until_complete(backend.execute([EnqueueJobs(tuple(jobs))], None))
        (leased,) = loop.run_until_complete(backend.execute(
            [LeaseJobs("node-a", (QueueWeight("default"),), 5, timeout_s)], None))
        records = leased.reply.jobs
        assert [r.id for r in records] == [j.id for j in jobs]
        (stored,) = loop.run_until_complete(backend.execute([GetJobs(tuple(r.id for r in records))],
                                                            None))
        assert stored.jobs == records


def test_events_name_only_the_jobs_a_watcher_read(harness: RedisHarness) -> None:
    prefix = RedisSettings.from_url(harness.url).prefix
    pubsub = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}:events")
    seen: list[str] = []

    def published_ids() -> list[str]:
        ids = []
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            ids += [i.decode() for i in msgpack.unpackb(message["data"], raw=True)[1]]
        return ids

    watched, quiet = new_job(), new_job()
    harness.execute(EnqueueJobs((watched, quiet)))
    harness.execute(WatchRead((watched.id,)))
    harness.execute(GetJobs((quiet.id,)))  # a plain read flags nothing
    leased = harness.execute(LeaseJobs("n", (QueueWeight("default"),), 2, 30.0)).jobs
    seen += published_ids()
    harness.execute(AckJobs(tuple(AckItem(j.id, j.attempt, b"\xc0") for j in leased)))
    seen += published_ids()
    pubsub.close()
    assert seen == [watched.id, watched.id]  # leased, then succeeded; never the other


def test_resuming_a_queue_publishes_it_as_ready(harness: RedisHarness) -> None:
    prefix = RedisSettings.from_url(harness.url).prefix
    pubsub = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}:events")
    pubsub.get_message(timeout=0.2)

    def ready_queues() -> list[str]:
        queues = []
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            queues += [q.decode() for q in msgpack.unpackb(message["data"], raw=True)[2]]
        return queues

    harness.execute(SetQueuePaused("mail", True))
    harness.execute(SetQueuePaused("sms", False))  # was not paused: nothing to tell
    assert ready_queues() == []
    harness.execute(SetQueuePaused("mail", False))
    assert ready_queues() == ["mail"]
    pubsub.close()


def test_a_batch_runs_in_order_in_one_call(harness: RedisHarness) -> None:
    job = new_job()
    lease = LeaseJobs("n1", (QueueWeight("default"),), 5, 30.0)
    cmds = [EnqueueJobs((job,)), lease, CancelJobs((job.id,)), "bogus"]
    replies = harness.loop.run_until_complete(harness.backend.execute(cmds, START_S))
    assert replies[0] == EnqueueReply((job.id,), (True,))
    assert [j.id for j in replies[1].reply.jobs] == [job.id]
    assert replies[2].states == ("active",)
    assert isinstance(replies[3], TypeError)


def test_a_lease_reply_keeps_to_the_frame_budget(harness: RedisHarness) -> None:
    from gotask._job import NewJob
    from gotask.actors.storage.actor import LEASE_REPLY_BYTES_MAX

    big = [NewJob(f"big{i:04}", "t", "default", msgpack.packb([["x" * 200_000], {}]))
           for i in range(10)]
    harness.execute(EnqueueJobs(tuple(big)))
    lease = LeaseJobs("n1", (QueueWeight("default"),), 10, 30.0)
    got = harness.execute(lease).jobs
    assert 1 <= len(got) < 10
    assert sum(len(j.args) for j in got) <= LEASE_REPLY_BYTES_MAX
    rest = harness.execute(GetJobs(tuple(j.id for j in big[len(got):]))).jobs
    assert {(j.state, j.attempt) for j in rest if j is not None} == {("queued", 0)}
    assert harness.execute(lease).jobs[0].id == big[len(got)].id  # kept its place


def test_node_limit_is_storage_full(harness: RedisHarness, monkeypatch: Any) -> None:
    from gotask.actors.storage import _redis_backend

    monkeypatch.setattr(_redis_backend, "NODES_MAX", 1)
    harness.execute(RegisterNode("n1", {}, 10.0))
    with pytest.raises(StorageError, match="nodes_max=1"):
        harness.execute(RegisterNode("n2", {}, 10.0))


def test_settings_parse_prefix_and_hide_the_password() -> None:
    s = RedisSettings.from_url("redis://u:secret@h:1/2?prefix=app.q&socket_timeout=3")
    assert (s.prefix, s.url) == ("app.q", "redis://u:secret@h:1/2?socket_timeout=3")
    assert "secret" not in s.display
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    with pytest.raises(ConfigError, match="prefix"):
        RedisSettings.from_url("redis://h/0?prefix=a{b}")
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisSettings.from_url("http://h/0")


def test_refuses_a_redis_that_evicts_keys(tmp_path: Any) -> None:
    port = _free_port()
    proc = _spawn_redis(port, "--maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(StorageError, match="allkeys-lru"):
            trio.run(open_redis_storage, f"redis://127.0.0.1:{port}/0")
    finally:
        proc.kill()
        proc.wait()


def test_backend_reconnects_and_reloads_its_scripts() -> None:
    port = _free_port()
    proc = _spawn_redis(port)
    loop = asyncio.new_event_loop()
    backend = RedisBackend(RedisSettings.from_url(f"redis://127.0.0.1:{port}/0"), retry_s=0.5)
    count = CountJobs()
    try:
        loop.run_until_complete(backend.open(subscribe=False))
        loop.run_until_complete(backend.execute([EnqueueJobs((new_job(),))]))
        proc.kill()
        proc.wait()
        (down,) = loop.run_until_complete(backend.execute([count]))
        assert isinstance(down, StorageUnavailable), down
        proc = _spawn_redis(port)  # empty: the scripts are gone too (NOSCRIPT)
        (up,) = loop.run_until_complete(backend.execute([count]))
        assert up == CountJobsReply(())
    finally:
        loop.run_until_complete(backend.close())
        loop.close()
        proc.kill()
        proc.wait()


def test_unreachable_redis_is_storage_unavailable() -> None:
    url = f"redis://:hunter2hunter2@127.0.0.1:{_free_port()}/0"
    with pytest.raises(StorageUnavailable, match="cannot reach Redis") as info:
        trio.run(open_redis_storage, url)
    assert "hunter2" not in str(info.value)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn_redis(port: int, *extra: str) -> Any:
    import subprocess
    import time

    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", *extra],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


# -- the actor ---------------------------------------------------------------------------------


class TestRedisShell(StorageShellContract):
    @pytest.fixture
    async def actor(self) -> AsyncIterator[Actor]:
        url = unique_url("actor")
        storage = await open_redis_storage(url)
        try:
            async with open_node("solo") as node:
                addr = await node.start_actor(STORAGE, _partial(storage), inbox_max=4096)
                yield node, addr
        finally:
            await storage.aclose()
            delete_prefix(url)


def _partial(storage: Any) -> Any:
    import functools

    return functools.partial(run_redis_storage, storage=storage)


async def test_another_node_s_changes_wake_leases_and_reach_watchers() -> None:
    url = unique_url("pair")
    first, second = await open_redis_storage(url), await open_redis_storage(url)
    try:
        async with open_node("a") as a, open_node("b") as b:
            at_a = await a.start_actor(STORAGE, _partial(first), inbox_max=4096)
            at_b = await b.start_actor(STORAGE, _partial(second), inbox_max=4096)
            inbox, workers = a.open_inbox("watcher"), a.open_inbox(WORKERS)
            job = new_job()
            lease = LeaseJobs("a", (QueueWeight("default"),), 4, 30.0)
            async with trio.open_nursery() as nursery:
                async def park() -> None:
                    reply = await a.call(at_a, LeaseWait(lease, 10.0))
                    assert [j.id for j in reply.jobs] == [job.id]
                nursery.start_soon(park)
                await trio.sleep(0.2)
                with trio.fail_after(2):
                    await b.call(at_b, EnqueueJobs((job,)))
            await a.call(at_a, WatchJobs((job.id,), Address("a", "watcher")))
            await b.call(at_b, CancelJobs((job.id,)))  # running: cancellation requested
            with trio.fail_after(5):
                env = await inbox.receive()
            assert isinstance(env.msg, JobChanged) and env.msg.job.cancel_requested
            with trio.fail_after(5):
                env = await workers.receive()
            assert env.msg == CancelRunning((LeaseToken(job.id, 1),))
    finally:
        await first.aclose()
        await second.aclose()
        delete_prefix(url)


# -- a cluster of two nodes on one Redis -------------------------------------------------------

app = App("redis-cluster-tests")


@app.task(name="add")
async def add(x: int, y: int) -> int:
    return x + y


async def test_a_queue_paused_through_one_node_waits_on_both_until_resumed() -> None:
    url = unique_url("pause")
    try:
        async with open_server(NodeConfig(app=app, name="a", storage=url, listen=None),
                               listen=False) as a, \
                open_server(NodeConfig(app=app, name="b", storage=url, listen=None),
                            listen=False) as b:
            await pause_holds_on_both_nodes(a, b, "default")
    finally:
        delete_prefix(url)


async def test_two_nodes_share_jobs_through_redis() -> None:
    url = unique_url("cluster")
    config_a = NodeConfig(app=app, name="a", storage=url, listen=None)
    config_b = NodeConfig(app=app, name="b", storage=url, listen=None)
    try:
        async with open_server(config_a, listen=False) as a, \
                open_server(config_b, listen=False) as b:
            item = JobSpec("add", pack_args([2, 3], {}))
            ids = (await a.node.call(a.broker, Enqueue((item,) * 20))).ids
            done = await b.node.call(b.node.address(BROKER), WaitJobs(ids, 20.0))
            assert {j.state for j in done.jobs if j is not None} == {"succeeded"}
            await a.node.call(a.storage, RegisterNode("a", {"v": 1}, 15.0))
            await b.node.call(b.storage, RegisterNode("b", {"v": 1}, 15.0))
            nodes = await a.node.call(a.storage, ListNodes())
            assert {"a", "b"} <= {n.node for n in nodes.nodes}
    finally:
        delete_prefix(url)
