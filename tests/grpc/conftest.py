"""A live node with its gRPC face on a real socket, and a grpcio client for it.

The client is grpcio's synchronous one, called from worker threads
(`trio.to_thread.run_sync`), so the test's trio loop keeps running the node.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
import trio

from gotask._server import Server, open_server
from gotask.config import NodeConfig
from gotask.v1 import gotask_pb2_grpc as pb_grpc
from tests.web.webapp import app

TOKEN = "grpc-token-0123456789abcdef"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def node_config(**kwargs: Any) -> NodeConfig:
    """A small node serving gRPC on a free loopback port, with a token."""
    defaults: dict[str, Any] = dict(app=app, name="grpc1", listen=None, concurrency=4,
                                    lease_timeout_s=10, heartbeat_s=2, grace_s=2,
                                    grpc=("127.0.0.1", 0), http_token=TOKEN.encode())
    return NodeConfig(**(defaults | kwargs))


async def call(method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
    """`method(request)` with the token, in a worker thread."""
    kwargs.setdefault("metadata", AUTH)
    kwargs.setdefault("timeout", 30)
    return await trio.to_thread.run_sync(functools.partial(method, request, **kwargs))


async def collect(iterator: Iterator[Any]) -> list[Any]:
    """Every item of a server stream, read in a worker thread."""
    return await trio.to_thread.run_sync(list, iterator)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with open_server(node_config()) as srv:
        yield srv


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[pb_grpc.GoTaskStub]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GoTaskStub(channel)
