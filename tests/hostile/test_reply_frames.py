"""Issue 22, item 4: no reply outgrows the 1 MiB wire frame, over a real socket.

Before: a listing of six jobs with 250 KB results made a 1.5 MB reply; the wire refused
to encode it, the Broker crashed (and restarted) and the client waited out its timeout.
Now a page is cut to 768 KiB of records and continues from its cursor (the client
gathers pages up to its limit), a read of several ids that would not fit one reply is
refused with `ReplyTooLarge`, and the connection stays up for the next request.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from gotask import App
from gotask._errors import RemoteActorError, ReplyTooLarge
from gotask._job import ARGS_BYTES_MAX, RESULT_BYTES_MAX
from gotask._protocol import GetJobs, JobPage, ListJobs, WaitJobs, WatchJobs
from gotask._server import Server, open_server
from gotask.actors.storage._reply_bytes import REPLY_BYTES_MAX
from gotask.client import AsyncClient
from gotask.runtime import Address, Envelope, ErrorReply, Reply, open_node
from gotask.transports import connect_tcp, serve_tcp
from gotask.transports._wire import FRAME_BYTES_MAX, encode

from ..transports.conformance import Blob, Ping, Pong

app = App("reply-frames")
#: The largest result a node keeps, near the limit.
BIG_RESULT = RESULT_BYTES_MAX - 64


@app.task(name="big", max_attempts=1)
async def big(n: int) -> bytes:
    return b"r" * n


@app.task(name="fails", max_attempts=1)
async def fails(data: bytes) -> None:
    raise RuntimeError("always")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    from gotask.config import NodeConfig

    config = NodeConfig(app=app, name="frames", listen=("127.0.0.1", 0), concurrency=8,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1)
    async with open_server(config) as srv:
        yield srv


def _client(server: Server) -> AsyncClient:
    return AsyncClient(nodes=[f"127.0.0.1:{server.port}"], call_timeout_s=20)


async def _finished(client: AsyncClient, task: str, count: int, *args: Any) -> list[str]:
    ids = [await client.enqueue(task, *args) for _ in range(count)]
    for job_id in ids:
        with trio.fail_after(30):
            while not (await client.get(job_id)).is_terminal:
                await trio.sleep(0.05)
    return ids


async def test_a_listing_of_big_results_comes_whole_in_several_pages(server: Server) -> None:
    async with _client(server) as client:
        ids = await _finished(client, "big", 6, BIG_RESULT)  # 6 x 256 KiB: 1.5 MiB
        jobs = await client.list_jobs(limit=100)
        assert [job.id for job in jobs] == sorted(ids)
        assert all(job.result is not None and len(job.result) > BIG_RESULT for job in jobs)
        # The node answers on: no actor crashed, the connection is the same one.
        assert await client.wait(await client.enqueue("big", 3), timeout_s=30) == b"rrr"


async def test_one_page_keeps_to_the_budget_and_its_cursor_continues(raw_peer: Any,
                                                                     server: Server) -> None:
    async with _client(server) as client:
        ids = await _finished(client, "big", 5, BIG_RESULT)
    peer = await _peer(raw_peer, server)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await _ask(peer, ListJobs(limit=100, cursor=cursor))
        assert isinstance(page, JobPage) and 1 <= len(page.jobs) < 5
        assert sum(len(encode(job)) for job in page.jobs) <= REPLY_BYTES_MAX
        seen += (job.id for job in page.jobs)
        if page.cursor is None:
            break
        assert page.cursor == page.jobs[-1].id
        cursor = page.cursor
    assert seen == sorted(ids)


async def test_a_dead_letter_listing_of_big_arguments_pages_too(server: Server) -> None:
    payload = b"a" * (ARGS_BYTES_MAX - 64)  # the largest arguments, near the limit
    async with _client(server) as client:
        ids = await _finished(client, "fails", 4, payload)  # 4 x 512 KiB: 2 MiB of args
        dead = await client.dlq_list(limit=10)
        assert [job.id for job in dead] == sorted(ids)
        assert all(job.state == "dead" and len(job.args) > len(payload) for job in dead)


@pytest.mark.parametrize("request_of", [
    lambda ids: GetJobs(ids),
    lambda ids: WaitJobs(ids, 0.0),
    lambda ids: WatchJobs(ids, Address("peer", "watcher")),
])
async def test_a_read_of_ids_too_big_for_a_reply_is_refused_in_one_line(
        raw_peer: Any, server: Server, request_of: Any) -> None:
    async with _client(server) as client:
        ids = tuple(await _finished(client, "big", 5, BIG_RESULT))
    peer = await _peer(raw_peer, server)
    refused = await _ask(peer, request_of(ids))
    assert isinstance(refused, ErrorReply)
    assert "ReplyTooLarge" in (refused.type_name + refused.message)
    assert "the 5 jobs asked for hold" in refused.message and "\n" not in refused.message
    # The link stays up and a read that fits is answered, a near-limit record included.
    one = await _ask(peer, GetJobs(ids[:1]))
    assert len(one.jobs) == 1 and len(one.jobs[0].result) > BIG_RESULT


async def test_the_client_names_the_error(server: Server) -> None:
    async with _client(server) as client:
        ids = tuple(await _finished(client, "big", 5, BIG_RESULT))
        with pytest.raises(ReplyTooLarge, match="ask for fewer ids"):
            await client._request(GetJobs(ids), retry=False)


async def _peer(raw_peer: Any, server: Server) -> Any:
    assert server.port is not None
    peer = await raw_peer.connect(server.port)
    await peer.handshake("peer", None)
    return peer


async def _ask(peer: Any, msg: object) -> Any:
    await peer.send(Envelope(Address("frames", "broker"), Address("peer", "$call"), 7, msg))
    with trio.fail_after(20):
        while True:
            got = await peer.receive(20)
            if isinstance(got, Reply) and got.corr == 7:
                return got.msg


def test_the_reply_budget_leaves_room_for_the_largest_record() -> None:
    assert ARGS_BYTES_MAX + RESULT_BYTES_MAX <= REPLY_BYTES_MAX < FRAME_BYTES_MAX


async def _oversized(ctx: Any, *, task_status: Any) -> None:
    """Answers a Blob with one twice as long, Ping with Pong."""
    task_status.started()
    while True:
        for env in await ctx.receive_batch():
            match env.msg:
                case Blob(data):
                    await ctx.reply(env, Blob(data + data))
                case Ping(n):
                    await ctx.reply(env, Pong(n))


async def test_a_reply_the_wire_cannot_carry_is_answered_with_that_error() -> None:
    # The last guard: any actor's reply over the frame limit becomes an error reply,
    # instead of crashing the actor and leaving its caller to time out.
    async with open_node("srv") as srv, open_node("cli") as cli:
        await srv.start_actor("big", _oversized)
        port = await srv.nursery.start(functools.partial(serve_tcp, srv, "127.0.0.1", 0,
                                                         secret=None))
        await connect_tcp(cli, "127.0.0.1", port, secret=None)
        with pytest.raises(RemoteActorError, match="over the 1048576-byte frame limit"):
            await cli.call(Address("srv", "big"), Blob(b"." * 600_000), timeout_s=10)
        assert await cli.call(Address("srv", "big"), Ping(3), timeout_s=10) == Pong(3)
        assert "cli" in srv.connected_nodes()
