"""Size limits (issue 21, item 8): configurable on the node, enforced where data enters.

A result over `--max-result-bytes` fails its attempt at once with `ResultTooLarge`
(dead, no retry: another attempt would return the same), checked by the worker before it
acknowledges, and the other jobs of the same batch of outcomes are kept. Arguments over
`--max-args-bytes` and enqueues over `--max-batch-jobs` are refused by the Broker;
storage re-checks the protocol's maxima on every command it is given or decodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gotask import App
from gotask._app import pack_args
from gotask._errors import (
    ConfigError,
    InvalidArguments,
    InvalidMessage,
    RemoteActorError,
    ResultTooLarge,
)
from gotask._job import ARGS_BYTES_MAX, RESULT_BYTES_MAX, NewJob
from gotask._node_main import config_from_args
from gotask._protocol import Enqueue, EnqueueReply, JobSpec, WaitJobs
from gotask._server import Server, open_server
from gotask.actors.storage.base import AckItem, AckJobs, EnqueueJobs
from gotask.cli import build_parser
from gotask.client import AsyncClient
from gotask.config import NodeConfig
from gotask.runtime import Address, Envelope
from gotask.transports._wire import decode, encode

app = App("size-limits")


@app.task(name="sized", max_attempts=3)
async def sized(n: int) -> bytes:
    await trio.sleep(0.05)  # so the small ones finish in the same outcome batch
    return b"r" * n


@app.task(name="echo")
async def echo(data: bytes) -> int:
    return len(data)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = NodeConfig(app=app, name="limits", listen=None, concurrency=8,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1,
                        args_bytes_max=1000, result_bytes_max=1000, batch_jobs_max=3)
    async with open_server(config, listen=False) as srv:
        yield srv


async def _enqueue(server: Server, *specs: JobSpec) -> Any:
    return await server.node.call(server.broker, Enqueue(specs))


async def _wait(server: Server, *ids: str) -> Any:
    reply = await server.node.call(server.broker, WaitJobs(ids, 30.0), timeout_s=40)
    return reply.jobs


async def test_a_result_over_the_limit_fails_at_once_and_the_batch_is_kept(
        server: Server) -> None:
    specs = [JobSpec("sized", pack_args([n], {})) for n in (10, 2000, 20)]
    reply = await _enqueue(server, *specs)
    assert isinstance(reply, EnqueueReply)
    jobs = await _wait(server, *reply.ids)
    small = [jobs[0], jobs[2]]
    assert [j.state for j in small] == ["succeeded"] * 2
    assert [len(j.result) for j in small] == [12, 22]  # msgpack bin header + bytes
    big = jobs[1]
    assert (big.state, big.attempt, big.error_type) == ("dead", 1, "ResultTooLarge")
    assert big.error == ("the result of task sized is 2003 bytes; the limit is 1000 "
                         "(--max-result-bytes)")


async def test_arguments_over_the_node_limit_are_refused_by_the_broker(
        server: Server) -> None:
    fits = JobSpec("echo", pack_args([b"x" * 900], {}))
    too_big = JobSpec("echo", pack_args([b"x" * 1000], {}))
    with pytest.raises(RemoteActorError, match=r"item 1: arguments encode to 1006 bytes; "
                                               r"the limit is 1000 \(--max-args-bytes\)"):
        await _enqueue(server, fits, too_big)
    reply = await _enqueue(server, fits)  # nothing of the refused request was kept
    assert (await _wait(server, *reply.ids))[0].state == "succeeded"


async def test_an_enqueue_over_the_batch_limit_is_refused_whole(server: Server) -> None:
    spec = JobSpec("echo", pack_args([b""], {}))
    with pytest.raises(RemoteActorError, match=r"an enqueue of 4 jobs; the limit is 3 "
                                               r"\(--max-batch-jobs\)"):
        await _enqueue(server, spec, spec, spec, spec)
    assert len((await _enqueue(server, spec, spec, spec)).ids) == 3


def test_storage_checks_the_protocol_maxima_on_every_command() -> None:
    job = NewJob("j1", "t", "default", b"\xc5" + b"a" * (ARGS_BYTES_MAX + 1))
    with pytest.raises(ValueError, match="item 0: arguments encode to"):
        EnqueueJobs((job,))
    big = AckItem("j1", 1, b"r" * (RESULT_BYTES_MAX + 1))
    with pytest.raises(ResultTooLarge, match="item 1: the result of job j1 is 262145 bytes"):
        AckJobs((AckItem("j0", 1, b"\xc0"), big))


def test_a_raw_ack_over_the_maximum_is_refused_where_it_is_decoded() -> None:
    ack = AckJobs((AckItem("j1", 1, b"r"),))
    object.__setattr__(ack.items[0], "result", b"r" * (RESULT_BYTES_MAX + 1))
    frame = encode(Envelope(Address("n", "storage"), Address("w", "$call"), 5, ack))
    with pytest.raises(InvalidMessage, match="the result of job j1 is 262145 bytes") as info:
        decode(frame)
    assert (info.value.corr, info.value.reply_node) == (5, "w")  # the sender is told


def test_the_limits_come_from_flags_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "gotask.toml"
    path.write_text('app = "examples.tasks"\nmax-args-bytes = 4096\nmax_batch_jobs = 50\n')
    args = build_parser().parse_args(["node", "--config", str(path),
                                      "--max-result-bytes", "2048"])
    config = config_from_args(args, {"GOTASK_MAX_BATCH_JOBS": "60"})
    assert (config.args_bytes_max, config.result_bytes_max, config.batch_jobs_max) == (
        4096, 2048, 60)
    assert NodeConfig(app=app).result_bytes_max == RESULT_BYTES_MAX


@pytest.mark.parametrize(("field", "value", "message"), [
    ("result_bytes_max", RESULT_BYTES_MAX + 1, "--max-result-bytes must be 1-262144, got"),
    ("args_bytes_max", 0, "--max-args-bytes must be 1-524288, got 0"),
    ("batch_jobs_max", 10_001, "--max-batch-jobs must be 1-10000, got 10001"),
])
def test_a_limit_can_be_lowered_never_raised(field: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        NodeConfig(app=app, **{field: value})
    assert "\n" not in str(caught.value)


async def test_a_client_set_to_the_node_limits_splits_and_refuses_before_sending() -> None:
    config = NodeConfig(app=app, name="limits-tcp", listen=("127.0.0.1", 0), concurrency=8,
                        lease_timeout_s=10, heartbeat_s=2, grace_s=1,
                        args_bytes_max=1000, batch_jobs_max=3)
    async with open_server(config) as server:
        nodes = [f"127.0.0.1:{server.port}"]
        async with AsyncClient(nodes) as plain:  # the defaults: the node refuses
            with pytest.raises(RemoteActorError, match=r"limit is 3 \(--max-batch-jobs\)"):
                await plain.enqueue_many([("echo", [b""], None, None)] * 7)
        async with AsyncClient(nodes, max_args_bytes=1000, max_batch_jobs=3) as client:
            ids = await client.enqueue_many([("echo", [b""], None, None)] * 7)
            assert len(set(ids)) == 7
            with pytest.raises(InvalidArguments, match=r"1006 bytes; the limit is 1000 "
                                                       r"\(max_args_bytes\)"):
                await client.enqueue("echo", b"x" * 1000)
            assert len(await client.list_jobs(limit=100)) == 7  # nothing else was sent
    with pytest.raises(ConfigError, match="max_batch_jobs 1-10000"):
        AsyncClient(nodes, max_batch_jobs=0)
