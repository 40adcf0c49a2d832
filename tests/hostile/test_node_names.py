"""Issue 22, item 7 of the hostile test: a duplicate node name.

A second node started with a live node's `--name` took over its routing silently; the
first became a zombie whose calls all timed out. Now the second is refused at join with a
clear error, and the first keeps working; a name whose node stopped is free at once.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from gotask import App
from gotask._node_name import NodeNameTaken
from gotask._protocol import Enqueue, JobSpec, WaitJobs
from gotask._server import open_server
from gotask.config import NodeConfig

app = App("names")


@app.task(name="double")
async def double(x: int) -> int:
    return 2 * x


def _config(name: str, **fields: object) -> NodeConfig:
    return NodeConfig(app=app, name=name, concurrency=2, lease_timeout_s=10, heartbeat_s=2,
                      grace_s=1, **fields)  # type: ignore[arg-type]


async def _run_one(server: object, x: int) -> None:
    from gotask._app import pack_args

    node, broker = server.node, server.broker  # type: ignore[attr-defined]
    (job_id,) = (await node.call(broker, Enqueue((JobSpec("double", pack_args([x], {})),)))).ids
    reply = await node.call(broker, WaitJobs((job_id,), timeout_s=10), timeout_s=15)
    assert [job.state for job in reply.jobs] == ["succeeded"]


async def test_a_second_live_node_with_the_same_name_is_refused_at_join() -> None:
    async with open_server(_config("owner", listen=("127.0.0.1", 0))) as owner:
        join = ("127.0.0.1", owner.port)
        async with open_server(_config("worker", listen=None, join=join)) as first:
            await trio.sleep(1.5)  # the first worker registered and renewed
            started = trio.current_time()
            with pytest.raises(NodeNameTaken, match="'worker' is in use by a live node"):
                async with open_server(_config("worker", listen=None, join=join)):
                    pytest.fail("the second node with a live name started")
            assert trio.current_time() - started < 10
            await _run_one(first, 21)  # the first is no zombie: its routing is intact
            assert "worker" in owner.node.connected_nodes()


async def test_a_name_is_free_again_once_its_node_stopped() -> None:
    config = _config("again", listen=None)
    async with open_server(config, listen=False) as first:
        assert first.node.name == "again"
    # Memory storage is per node, so reuse one owner and join it twice in a row.
    async with open_server(_config("owner2", listen=("127.0.0.1", 0))) as owner:
        worker = attrs.evolve(config, join=("127.0.0.1", owner.port))
        async with open_server(worker):
            pass
        started = trio.current_time()
        async with open_server(worker) as again:
            assert trio.current_time() - started < 3
            await _run_one(again, 2)
