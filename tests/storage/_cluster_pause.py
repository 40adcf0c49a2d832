"""A queue paused through one node of a shared store holds on every node until resumed
(run by the Redis and PostgreSQL cluster tests)."""

from __future__ import annotations

from gotask._app import pack_args
from gotask._protocol import CountQueues, Enqueue, JobSpec, PauseQueue, WaitJobs
from gotask._server import Server

__all__ = ["pause_holds_on_both_nodes"]


async def pause_holds_on_both_nodes(a: Server, b: Server, queue: str) -> None:
    """Pause `queue` through `a`, enqueue 20 "add" jobs to it through `b`: none runs in
    1 s; resume through `a`: all succeed, woken on `b` by the store's events."""
    await a.node.call(a.broker, PauseQueue(queue, True))
    item = JobSpec("add", pack_args([2, 3], {}), queue=queue)
    ids = (await b.node.call(b.broker, Enqueue((item,) * 20))).ids
    held = await b.node.call(b.broker, WaitJobs(ids, 1.0), timeout_s=10)
    assert {j.state for j in held.jobs if j is not None} == {"queued"}
    assert (await b.node.call(b.broker, CountQueues())).paused == (queue,)
    await a.node.call(a.broker, PauseQueue(queue, False))
    done = await b.node.call(b.broker, WaitJobs(ids, 30.0), timeout_s=40)
    assert {j.state for j in done.jobs if j is not None} == {"succeeded"}
    assert (await a.node.call(a.broker, CountQueues())).paused == ()
