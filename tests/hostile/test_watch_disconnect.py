"""Issue 22, item 6 of the hostile test: watch registrations leaked.

Watches on ids nobody changes stayed after the client left (~330 MB per million ids).
Now the node tells the Broker when the last link to a peer closes, and the Broker drops
that peer's watchers and unwatches at storage the ids nobody else watches.
"""

from __future__ import annotations

import itertools
from functools import partial

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
