"""Issue 22, item 6 of the hostile test: watch registrations leaked.

Watches on ids nobody changes stayed after the client left (~330 MB per million ids).
Now the node tells the Broker when the last link to a peer closes, and the Broker drops
that peer's watchers and unwatches at storage the ids nobody else watches.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import pytest
import trio

from gotask import App
from gotask import _protocol as proto
from gotask._job import JobRecord
from gotask._messages import UnwatchJobs as StorageUnwatch
from gotask.actors._broker_core import BrokerCore
from gotask.actors._broker_effects import CallDone, PeerGone, Received, Target, Tell
from gotask.actors.storage import base as storage
from gotask.runtime import open_node
from gotask.runtime.message import Address, Envelope
from gotask.transports import connect_tcp, serve_tcp

SELF = Address("n1", "broker")
app = App("watch-disconnect")


@app.task(name="noop")
async def noop() -> None:
    pass
SECRET = b"watch-disconnect-secret"


def _watch(core: BrokerCore, ids: tuple[str, ...], watcher: Address) -> None:
    env = Envelope(SELF, Address(watcher.node, "$call"), 1, proto.WatchJobs(ids, watcher))
    (call,) = core.handle(Received(env), 0.0)
    records = tuple(JobRecord(i, "t", "q", b"\x92\x90\x80", 0, "queued", 1.0, 1.0, 3, 60.0)
                    for i in ids)
    core.handle(CallDone(call.key, storage.GetJobsReply(records)), 0.0)  # type: ignore[attr-defined]


def test_a_gone_peer_loses_its_watches_and_storage_is_told() -> None:
    ids = itertools.count(1)
    core = BrokerCore(App("w"), SELF, lambda: f"id{next(ids)}")
    _watch(core, ("a", "b", "c"), Address("gone", "watch"))
    _watch(core, ("c", "d"), Address("stays", "watch"))
    assert core.handle(PeerGone("gone"), 1.0) == [
        Tell(Target.STORAGE, StorageUnwatch(("a", "b"), SELF))]
    assert sorted(core.book.ids()) == ["c", "d"]
    assert core.handle(PeerGone("nobody"), 2.0) == []


async def test_the_node_reports_the_last_link_to_a_peer_closing() -> None:
    lost: list[str] = []
    async with open_node("srv") as srv, open_node("cli") as cli:
        unsubscribe = srv.on_peer_lost(lost.append)
        port = await srv.nursery.start(partial(serve_tcp, srv, "127.0.0.1", 0, secret=SECRET))
        first = await connect_tcp(cli, "127.0.0.1", port, secret=SECRET)
        second = await connect_tcp(cli, "127.0.0.1", port, secret=SECRET)
        await first.aclose()
        await trio.sleep(0.2)
        assert lost == []  # another link to "cli" is still open
        await second.aclose()
        with trio.fail_after(3):
            while lost != ["cli"]:
                await trio.sleep(0.02)
        unsubscribe()


async def test_watches_of_clients_that_left_no_longer_fill_the_node(
        raw_peer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reproduction end to end, over real sockets: a node whose watch books hold 20
    # ids; two clients watch 10 scheduled jobs each and leave; a third client must still
    # be able to watch 10 others (before: "too many watched jobs (limit 20)", for as long
    # as the node ran).
    from gotask._app import pack_args
    from gotask._server import open_server
    from gotask.actors._watch import WatchBook
    from gotask.config import NodeConfig
    from gotask.runtime import Reply

    monkeypatch.setattr(WatchBook.__init__, "__defaults__", (20, 20))
    config = NodeConfig(app=app, name="watched", listen=("127.0.0.1", 0), concurrency=1,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1)
    async with open_server(config) as server:
        spec = proto.JobSpec("noop", pack_args([], {}), delay_s=3600.0)
        ids = (await server.node.call(server.broker, proto.Enqueue((spec,) * 30))).ids

        async def watch(name: str, some: tuple[str, ...]) -> object:
            peer = await raw_peer.connect(server.port)
            await peer.handshake(name, None)
            await peer.send(Envelope(Address("watched", "broker"), Address(name, "$call"), 3,
                                     proto.WatchJobs(some, Address(name, "w"))))
            while not isinstance(reply := await peer.receive(5), Reply):
                pass
            await peer.aclose()
            return reply.msg

        assert isinstance(await watch("c1", ids[:10]), proto.JobsReply)
        assert isinstance(await watch("c2", ids[10:20]), proto.JobsReply)
        with trio.fail_after(5):  # the node learns that c1 and c2 left
            while not isinstance(third := await watch("c3", ids[20:]), proto.JobsReply):
                await trio.sleep(0.1)
        assert [job.state for job in third.jobs] == ["scheduled"] * 10
