"""The client library against a fake Broker served over real TCP by a real trio node.

The fake Broker (`FakeBroker`) answers the client protocol the way the real one does,
with jobs that run themselves: "add" succeeds with the sum of its arguments after
reporting progress, "boom" ends dead, "slow" stays queued; any other task name is
refused with `TaskNotFound`. Two fakes may share one job table, like two nodes sharing
storage, to test failover.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio

from gotask._app import unpack_args
from gotask._client_admin import QueueStatus
from gotask._client_conn import nodes_from_env, parse_address
from gotask._client_jobs import chunks, remote_error
from gotask._errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLost,
    InvalidArguments,
    JobFailed,
    JobNotFound,
    NodeUnavailable,
    RemoteActorError,
    StorageFull,
    TaskNotFound,
    WaitTimeout,
)
from gotask._job import TERMINAL, JobRecord
from gotask._protocol import (
    CancelJobs,
    CancelReply,
    CountQueues,
    CountReply,
    Enqueue,
    EnqueueReply,
    GetJobs,
    JobChanged,
    JobPage,
    JobSpec,
    JobsReply,
    ListDead,
    ListJobs,
    ListNodes,
    NodeInfo,
    NodesReply,
    PauseQueue,
    PurgeDead,
    QueueCount,
    QueuesReply,
    RetryDead,
    UnwatchJobs,
    WaitJobs,
    WatchJobs,
)
from gotask.client import AsyncClient, Client, decode_result
from gotask.runtime import Address, Envelope, ErrorReply, Node, Ok, open_node
from gotask.transports._link import LinkOptions
from gotask.transports.tcp import serve_tcp

SECRET = b"0123456789abcdef-test-secret"
STEP_S = 0.02
FAST = LinkOptions(auth_failure_delay_s=0.0)


# -- the fake cluster ------------------------------------------------------------------------


@attrs.define
class JobTable:
    """Jobs shared by fake brokers, as storage is shared by real nodes."""

    jobs: dict[str, JobRecord] = attrs.Factory(dict)
    keys: dict[str, str] = attrs.Factory(dict)
    paused: set[str] = attrs.Factory(set)
    ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))


@attrs.define(eq=False)
class FakeBroker:
    """Answers the client protocol on one node; see the module docstring."""

    node: Node
    table: JobTable
    port: int = 0
    received: list[object] = attrs.Factory(list)
    hold: bool = False  # swallow requests unanswered (a request "in flight")
    watchers: dict[str, set[Address]] = attrs.Factory(dict)
    changed: trio.Event = attrs.Factory(trio.Event)
    stop: Any = None  # set by start_fake: take this node down

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, inbox: trio.MemoryReceiveChannel[Envelope]) -> None:
        async with trio.open_nursery() as nursery:
            async for env in inbox:
                self.received.append(env.msg)
                if self.hold:
                    continue
                try:
                    await self._handle(env, nursery)
                except Exception as exc:
                    await self.node.reply_error(env, exc)

    async def _handle(self, env: Envelope, nursery: trio.Nursery) -> None:
        msg = env.msg
        if isinstance(msg, Enqueue):
            await self.node.reply(env, self._enqueue(msg.jobs, nursery))
        elif isinstance(msg, GetJobs):
            await self.node.reply(env, JobsReply(tuple(map(self.table.jobs.get, msg.ids))))
        elif isinstance(msg, WaitJobs):
            nursery.start_soon(self._wait, env, msg)
        elif isinstance(msg, WatchJobs):
            for job_id in msg.ids:
                self.watchers.setdefault(job_id, set()).add(msg.watcher)
            await self.node.reply(env, JobsReply(tuple(map(self.table.jobs.get, msg.ids))))
        elif isinstance(msg, UnwatchJobs):
            for job_id in msg.ids:
                self.watchers.get(job_id, set()).discard(msg.watcher)
            await self.node.reply(env, Ok())
        else:
            await self.node.reply(env, self._admin(msg))

    def _enqueue(self, items: tuple[JobSpec, ...], nursery: trio.Nursery) -> EnqueueReply:
        for index, item in enumerate(items):
            if item.task not in ("add", "boom", "slow"):
                raise TaskNotFound(f"item {index}: unknown task {item.task!r}")
        ids, created = [], []
        for item in items:
            known = self.table.keys.get(item.idempotency_key or "")
            if known is not None:
                ids.append(known)
                created.append(False)
                continue
            job_id = f"job-{next(self.table.ids)}"
            if item.idempotency_key:
                self.table.keys[item.idempotency_key] = job_id
            self.set(JobRecord(job_id, item.task, item.queue or "default", item.args,
                               item.priority or 0, "queued", 1.0, 1.0,
                               item.max_attempts or 3, 60.0))
            ids.append(job_id)
            created.append(True)
            if item.task != "slow":
                nursery.start_soon(self._run, job_id)
        return EnqueueReply(tuple(ids), tuple(created))

    async def run_when_watched(self, job_id: str) -> None:
        """Run a job as "add" does once someone watches it (for tests of live pushes)."""
        with trio.fail_after(5):
            while not self.watchers.get(job_id):
                await trio.sleep(0.005)
        await self._run(job_id, task="add")

    async def _run(self, job_id: str, task: str | None = None) -> None:
        await trio.sleep(STEP_S)
        job = self.table.jobs[job_id]
        self.set(attrs.evolve(job, state="active", attempt=1, progress=0.5,
                              progress_message="half way"))
        await trio.sleep(STEP_S)
        if (task or job.task) == "add":
            args, _ = unpack_args(job.args)
            self.set(attrs.evolve(self.table.jobs[job_id], state="succeeded", progress=1.0,
                                  result=msgpack.packb(sum(args))))
        else:
            self.set(attrs.evolve(self.table.jobs[job_id], state="dead", error_type="ValueError",
                                  error="boom", traceback="Traceback: boom"))

    def set(self, job: JobRecord) -> None:
        """Store a job and push the change to its watchers, as storage and Broker do."""
        self.table.jobs[job.id] = job
        for watcher in self.watchers.get(job.id, set()):
            self.node.send_nowait(watcher, JobChanged(job), src=self.node.address("broker"))
        self.changed.set()
        self.changed = trio.Event()

    async def _wait(self, env: Envelope, msg: WaitJobs) -> None:
        with trio.move_on_after(msg.timeout_s):
            while not all(self._terminal(i) for i in msg.ids):
                await self.changed.wait()
        await self.node.reply(env, JobsReply(tuple(map(self.table.jobs.get, msg.ids))))

    def _terminal(self, job_id: str) -> bool:
        job = self.table.jobs.get(job_id)
        return job is None or job.state in TERMINAL

    def _admin(self, msg: object) -> object:
        jobs = self.table.jobs
        match msg:
            case CancelJobs(ids=ids):
                for job_id in ids:
                    if job_id in jobs and jobs[job_id].state in ("queued", "scheduled"):
                        self.set(attrs.evolve(jobs[job_id], state="cancelled"))
                return CancelReply(tuple(jobs[i].state if i in jobs else "missing" for i in ids))
            case CountQueues():
                counts: dict[tuple[str, str], int] = {}
                for job in jobs.values():
                    counts[job.queue, job.state] = counts.get((job.queue, job.state), 0) + 1
                return QueuesReply(tuple(QueueCount(q, s, n)
                                         for (q, s), n in sorted(counts.items())),
                                   tuple(sorted(self.table.paused)))
            case PauseQueue(queue=queue, paused=paused):
                (self.table.paused.add if paused else self.table.paused.discard)(queue)
                return Ok()
            case ListDead(queue="storage-full"):
                raise RemoteActorError("StorageFull", "the job table is full")
            case ListDead(queue=queue, limit=limit):
                dead = [j for j in jobs.values() if j.state == "dead"
                        and queue in (None, j.queue)]
                return JobPage(tuple(dead[:limit]), None)
            case RetryDead(ids=ids) | PurgeDead(ids=ids):
                chosen = [i for i in (ids or list(jobs)) if i in jobs and jobs[i].state == "dead"]
                for job_id in chosen:
                    if isinstance(msg, RetryDead):
                        jobs[job_id] = attrs.evolve(jobs[job_id], state="queued")
                    else:
                        del jobs[job_id]
                return CountReply(len(chosen))
            case ListJobs(queue=queue, state=state, task=task, limit=limit):
                found = [j for j in sorted(jobs.values(), key=lambda j: j.id)
                         if queue in (None, j.queue) and state in (None, j.state)
                         and task in (None, j.task)]
                return JobPage(tuple(found[:limit]), None)
            case ListNodes():
                info = {"pid": 1, "queues": ["default:1"], "concurrency": 4}
                return NodesReply((NodeInfo(self.node.name, info, 1.0e9, 1.0e9 + 5, 2e9),))
        raise TypeError(f"the broker does not accept {type(msg).__name__}")


@asynccontextmanager
async def fake_node(
    name: str = "node-a",
    *,
    secret: bytes | None = None,
    table: JobTable | None = None,
    options: LinkOptions = FAST,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[FakeBroker]:
    """A trio node named `name` with a fake Broker, listening on a free loopback port."""
    async with open_node(name) as node:
        fake = FakeBroker(node, table or JobTable())
        node.nursery.start_soon(fake.serve, node.open_inbox("broker"))
        fake.port = await node.nursery.start(partial(
            serve_tcp, node, "127.0.0.1", 0, secret=secret, options=options,
            ssl_context=ssl_context))
        yield fake


async def start_fake(nursery: trio.Nursery, name: str = "node-a", **kwargs: Any) -> FakeBroker:
    """Run `fake_node` in `nursery`; `fake.stop()` takes that node down (sockets closed)."""

    async def run(*, task_status: trio.TaskStatus[FakeBroker]) -> None:
        with trio.CancelScope() as scope:
            async with fake_node(name, **kwargs) as fake:
                fake.stop = scope.cancel
                task_status.started(fake)
                await trio.sleep_forever()

    fake: FakeBroker = await nursery.start(run)
    return fake


def closed_port() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBroker:
    return await start_fake(nursery)


# -- under trio --------------------------------------------------------------------------------


async def test_enqueue_get_wait(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        job_id = await client.enqueue("add", 1, 2, queue="math", priority=5)
        job = await client.get(job_id)
        assert (job.id, job.task, job.queue, job.priority) == (job_id, "add", "math", 5)
        assert unpack_args(job.args) == ([1, 2], {})
        assert await client.wait(job_id, timeout_s=5) == 3
        assert client.connected_to == fake.address


async def test_unknown_task_raises_task_not_found(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        with pytest.raises(JobNotFound):
            await client.get("job-404")
    with pytest.raises(TaskNotFound, match="unknown task 'nope'"):  # not in an ExceptionGroup
        async with AsyncClient([fake.address]) as client:
            await client.enqueue("nope")


async def test_many_tasks_share_one_client(fake: FakeBroker) -> None:
    ids: list[str] = []

    async def enqueue_and_wait(n: int) -> None:
        job_id = await client.enqueue("add", n, 1)
        ids.append(job_id)
        assert await client.wait(job_id) == n + 1

    async with AsyncClient([fake.address]) as client, trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(enqueue_and_wait, n)
    assert len(set(ids)) == 50


async def test_non_msgpack_argument_is_refused_before_connecting() -> None:
    async with AsyncClient([closed_port()]) as client:
        with pytest.raises(InvalidArguments, match="object is not a msgpack value"):
            await client.enqueue("add", object())
        with pytest.raises(InvalidArguments):
            await client.enqueue_with("add", kwargs={1: 2})  # type: ignore[dict-item]
        assert client.connected_to is None


async def test_option_checks_happen_locally() -> None:
    async with AsyncClient([closed_port()]) as client:
        with pytest.raises(TypeError, match="unknown enqueue option"):
            await client.enqueue_with("add", colour="red")
        with pytest.raises(TypeError, match="priority must be int"):
            await client.enqueue("add", priority=True)
        with pytest.raises(ValueError, match="delay_s"):
            await client.enqueue("add", delay_s=-1)
        with pytest.raises(TypeError, match=r"\(task, args, kwargs, options\)"):
            await client.enqueue_many([("add", [1])])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="either ids or all_jobs"):
            await client.dlq_retry()


async def test_task_kwargs_named_like_options_go_through_enqueue_with(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        job_id = await client.enqueue_with("slow", [1], {"queue": "q", "priority": 2},
                                           queue="other")
        job = await client.get(job_id)
        assert job.queue == "other"
        assert unpack_args(job.args) == ([1], {"queue": "q", "priority": 2})
        job_id = await client.enqueue("slow", 7, user="ann")
        assert unpack_args((await client.get(job_id)).args) == ([7], {"user": "ann"})


async def test_idempotency_key_and_enqueue_many(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        first = await client.enqueue("slow", idempotency_key="order-1")
        assert await client.enqueue("slow", idempotency_key="order-1") == first
        ids = await client.enqueue_many([("add", [1, 1], None, None),
                                         ("add", [2], {}, {"queue": "math"})])
        assert len(set(ids)) == 2
        assert [await client.wait(i) for i in ids] == [2, 2]
        with pytest.raises(TaskNotFound, match="item 1"):
            await client.enqueue_many([("add", [], None, None), ("nope", [], None, None)])


def test_large_batches_are_split_to_fit_a_frame() -> None:
    item = JobSpec("add", b"x" * 300_000)
    assert [len(c) for c in chunks([item] * 5)] == [2, 2, 1]


async def test_dead_job_raises_job_failed(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        job_id = await client.enqueue("boom")
        with pytest.raises(JobFailed, match="is dead after 1 attempt") as info:
            await client.wait(job_id)
        err = info.value
        assert (err.job_id, err.state, err.error_type, err.error) == (
            job_id, "dead", "ValueError", "boom")
        assert err.traceback == "Traceback: boom"


async def test_wait_times_out_and_cancel(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        job_id = await client.enqueue("slow")
        with pytest.raises(WaitTimeout, match="still queued"):
            await client.wait(job_id, timeout_s=0.1)
        assert await client.cancel(job_id) == "cancelled"
        with pytest.raises(JobFailed, match="was cancelled"):
            await client.wait(job_id)
        with pytest.raises(JobNotFound):
            await client.cancel("job-404")


async def test_watch_yields_live_pushes_until_terminal(
    fake: FakeBroker, nursery: trio.Nursery
) -> None:
    async with AsyncClient([fake.address]) as client:
        job_id = await client.enqueue("slow", 20, 22)
        nursery.start_soon(fake.run_when_watched, job_id)
        seen = [job async for job in client.watch(job_id)]
        assert seen[-1].state == "succeeded"
        assert decode_result(seen[-1]) == 42
        assert any(j.state == "active" and j.progress_message == "half way" for j in seen)
        # every push came from the node: nothing was polled
        assert sum(isinstance(m, WatchJobs) for m in fake.received) == 1
        with trio.fail_after(2):
            while not any(isinstance(m, UnwatchJobs) for m in fake.received):
                await trio.sleep(0.01)
        with pytest.raises(JobNotFound):
            async for _ in client.watch("job-404"):
                pass


async def test_queues_dlq_and_nodes(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        await client.enqueue("slow", queue="mail")
        dead = await client.enqueue("boom")
        with pytest.raises(JobFailed):
            await client.wait(dead)
        assert await client.queues() == {"default": {"dead": 1}, "mail": {"queued": 1}}
        assert [j.id for j in await client.dlq_list()] == [dead]
        assert await client.dlq_retry([dead]) == 1
        assert await client.dlq_list(queue="default") == []
        fake.table.jobs[dead] = attrs.evolve(fake.table.jobs[dead], state="dead")
        assert await client.dlq_purge(all_jobs=True) == 1
        [info] = await client.nodes()
        assert info.node == "node-a" and info.info["concurrency"] == 4


async def test_pause_and_resume_a_queue(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        await client.enqueue("slow", queue="mail")
        await client.pause_queue("idle")
        await client.pause_queue("mail")
        assert await client.queue_list() == [
            QueueStatus("idle", {}, True), QueueStatus("mail", {"queued": 1}, True)]
        assert await client.queues() == {"mail": {"queued": 1}}  # counts only, as before
        await client.resume_queue("idle")
        assert [q.name for q in await client.queue_list() if q.paused] == ["mail"]
        with pytest.raises(ValueError, match="queue"):
            await client.pause_queue("")


@pytest.mark.parametrize(("node_beat_s", "client_beat_s"), [(0.1, 10.0), (10.0, 0.1)])
async def test_heartbeats_keep_an_idle_connection(
    nursery: trio.Nursery, node_beat_s: float, client_beat_s: float
) -> None:
    # Whichever side pings, the other must answer, or the pinging side's idle timeout
    # (3-4 heartbeats) closes the connection within the 0.6 s slept here.
    node = await start_fake(nursery, "node-hb", options=LinkOptions(heartbeat_s=node_beat_s))
    async with AsyncClient([node.address], heartbeat_s=client_beat_s) as client:
        await client.queues()
        link = client._link
        await trio.sleep(0.6)
        await client.queues()
        assert client._link is link and link is not None and not link.closed


# -- errors from the node ---------------------------------------------------------------------


def test_error_replies_map_to_gotask_classes_only() -> None:
    assert isinstance(remote_error(ErrorReply("TaskNotFound", "no", "")), TaskNotFound)
    relayed = remote_error(ErrorReply("RemoteActorError", "StorageFull: full", "tb"))
    assert isinstance(relayed, StorageFull) and str(relayed) == "full"
    for name in ("KeyError", "Retry", "SupervisorGaveUp", "annotations", "os"):
        err = remote_error(ErrorReply(name, "text", "tb"))
        assert type(err) is RemoteActorError and err.type_name == name
        assert err.traceback_text == "tb"


async def test_storage_error_relayed_by_the_broker(fake: FakeBroker) -> None:
    async with AsyncClient([fake.address]) as client:
        with pytest.raises(StorageFull, match="the job table is full"):
            await client.dlq_list(queue="storage-full")


# -- failover and auth ------------------------------------------------------------------------


async def test_unreachable_nodes_raise_node_unavailable() -> None:
    down = closed_port()
    async with AsyncClient([down], connect_rounds=2, backoff_base_s=0.01) as client:
        with pytest.raises(NodeUnavailable, match=f"cannot reach any GoTask node.*{down}"):
            await client.queues()


async def test_fails_over_to_the_second_address(fake: FakeBroker) -> None:
    async with AsyncClient([closed_port(), fake.address]) as client:
        assert await client.wait(await client.enqueue("add", 2, 3)) == 5
        assert client.connected_to == fake.address


async def test_connection_loss_retries_reads_not_plain_enqueues(nursery: trio.Nursery) -> None:
    table = JobTable()
    node_a = await start_fake(nursery, "node-a", table=table)
    node_b = await start_fake(nursery, "node-b", table=table)
    async with AsyncClient([node_a.address, node_b.address]) as client:
        job_id = await client.enqueue("slow")
        node_a.hold = True
        got: list[JobRecord] = []

        async def read() -> None:
            got.append(await client.get(job_id))

        async def stop_a() -> None:
            await _until(lambda: len(node_a.received) == 3)  # enqueue, get, enqueue
            node_a.stop()

        async with trio.open_nursery() as tasks:
            tasks.start_soon(read)
            tasks.start_soon(stop_a)
            with pytest.raises(ConnectionLost, match="in flight"):
                await client.enqueue("slow")
        assert got[0].id == job_id  # the read was sent again, to node B
        assert client.connected_to == node_b.address
        assert await client.enqueue("slow", idempotency_key="k") == "job-2"


async def test_watch_survives_failover(nursery: trio.Nursery) -> None:
    table = JobTable()
    node_a = await start_fake(nursery, "node-a", table=table)
    node_b = await start_fake(nursery, "node-b", table=table)

    async def change_on_b() -> None:
        await _until(lambda: any(isinstance(m, WatchJobs) for m in node_b.received))
        node_b.set(attrs.evolve(table.jobs[job_id], state="active"))
        await trio.sleep(STEP_S)
        node_b.set(attrs.evolve(table.jobs[job_id], state="cancelled"))

    async with AsyncClient([node_a.address, node_b.address]) as client:
        job_id = await client.enqueue("slow")
        updates = client.watch(job_id)
        assert (await updates.__anext__()).state == "queued"
        node_a.stop()
        nursery.start_soon(change_on_b)
        with trio.fail_after(5):
            states = [job.state async for job in updates]
        assert states[-1] == "cancelled"  # watched again on node B, pushes from there


async def test_secret_is_required_and_checked() -> None:
    async with fake_node(secret=SECRET) as node:
        async with AsyncClient([node.address], secret=SECRET) as client:
            assert await client.queues() == {}
        for secret in (b"wrong-secret-0123456789", None):
            async with AsyncClient([node.address], secret=secret) as client:
                with pytest.raises(AuthenticationError):
                    await client.queues()


async def test_tls_with_a_private_ca(nursery: trio.Nursery) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    node = await start_fake(nursery, "node-tls", secret=SECRET, ssl_context=server_ctx)
    async with AsyncClient([node.address], secret=SECRET, ssl_context=client_ctx) as client:
        assert await client.wait(await client.enqueue("add", 1, 1)) == 2
    async with AsyncClient([node.address], secret=SECRET, connect_rounds=1) as client:
        with pytest.raises(NodeUnavailable):  # plain TCP to a TLS listener
            await client.queues()


async def test_client_requires_async_with_and_closes() -> None:
    client = AsyncClient()
    with pytest.raises(RuntimeError, match="async with"):
        await client.queues()
    async with client:
        await client.aclose()
        with pytest.raises(Exception, match="closed"):
            await client.queues()


# -- configuration ------------------------------------------------------------------------------


def test_addresses_and_environment(tmp_path: Path) -> None:
    assert parse_address("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("example.com") == ("example.com", 7450)
    assert parse_address("[::1]") == parse_address("::1") == ("::1", 7450)
    for bad in ("host:0", "host:x", ":7450", "[::1]x", "[]:1", "a:b:c:"):
        with pytest.raises(ConfigError):
            parse_address(bad)
    assert nodes_from_env({}) == ["127.0.0.1:7450"]
    assert nodes_from_env({"GOTASK_NODES": "a:1, b:2,"}) == ["a:1", "b:2"]
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    env = {"GOTASK_NODES": "a:1", "GOTASK_SECRET_FILE": str(tmp_path / "secret")}
    assert AsyncClient.from_env(env)._secret == SECRET
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        AsyncClient.from_env({"GOTASK_SECRET_FILE": str(tmp_path / "missing")})


# -- under asyncio, and blocking ------------------------------------------------------------------


async def _asyncio_session(address: str) -> tuple[int, list[str], str]:
    async with AsyncClient([address]) as client:
        job_id = await client.enqueue("add", 40, 2)
        result = await client.wait(job_id, timeout_s=5)
        states = [job.state async for job in client.watch(await client.enqueue("add", 1))]
        try:
            await client.enqueue("nope")
        except TaskNotFound as exc:
            error = type(exc).__name__
        return result, states, error


async def test_async_client_under_asyncio(fake: FakeBroker) -> None:
    result, states, error = await trio.to_thread.run_sync(
        asyncio.run, _asyncio_session(fake.address))
    assert (result, states[-1], error) == (42, "succeeded", "TaskNotFound")


def _blocking_session(address: str) -> dict[str, Any]:
    with Client(address) as client:
        job_id = client.enqueue("add", 1, 2)
        out: dict[str, Any] = {"result": client.wait(job_id)}
        out["states"] = [job.state for job in client.watch(client.enqueue("add", 3))]
        try:
            client.enqueue("nope")
        except TaskNotFound as exc:
            out["error"] = str(exc)
        out["queues"] = client.queues()
    with Client(address, backend="trio") as client:
        out["trio"] = client.wait(client.enqueue_with("add", [5, 5]))
        parent = client._running
        assert parent is not None
        client._running = attrs.evolve(parent, pid=-1)  # as if this process were a fork
        client.queues()
        out["forked"] = client._running is not None and client._running.client is not (
            parent.client)
        parent.close()
    return out


async def test_blocking_client_from_a_thread(fake: FakeBroker) -> None:
    out = await trio.to_thread.run_sync(_blocking_session, fake.address)
    assert out["result"] == 3 and out["states"][-1] == "succeeded"
    assert "unknown task 'nope'" in out["error"]
    assert out["queues"] == {"default": {"succeeded": 2}}
    assert out["trio"] == 10 and out["forked"]


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.005)
