"""Serving the gRPC face (grpc.aio) in an asyncio thread beside the node.

Rules of this module:
- `open_grpc` starts an `AioThread`, the `Bridge` into trio and grpc's asyncio server
  with the `gotask.v1.GoTask` service, the standard health service (`grpc.health.v1`)
  and server reflection; it is ready once the port is bound (port 0 picks a free one).
- With a token, every method but health's needs the metadata
  `authorization: Bearer <token>`, compared in constant time; anything else gets
  UNAUTHENTICATED. `NodeConfig` refuses a non-loopback address without a token unless
  the operator said `insecure`. The token is never logged.
- Limits where data enters: messages of at most `MESSAGE_BYTES_MAX`, at most
  `RPCS_MAX` calls at once (more get RESOURCE_EXHAUSTED).
- Leaving the block stops gracefully: health answers NOT_SERVING, calls in progress get
  `GRACE_S` seconds (the Broker still answers them), then the rest are cancelled, the
  bridge stops and the thread ends.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
import grpc
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gotask._errors import ConfigError
from gotask.runtime import Address, Node
from gotask.runtime._aiothread import AioThread
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc
from gotask.web._grpc_bridge import Bridge, BridgeStatistics
from gotask.web.grpc_api import GoTaskService, NodeCalls

__all__ = ["GRACE_S", "GrpcFace", "open_grpc"]

#: Largest message the server takes, in bytes.
MESSAGE_BYTES_MAX: Final = 4 << 20
#: Most calls in progress at once.
RPCS_MAX: Final = 1000
#: Seconds calls in progress get when the node stops.
GRACE_S: Final = 5.0
SERVICE: Final = pb.DESCRIPTOR.services_by_name["GoTask"].full_name
_OPEN_PREFIX: Final = "/grpc.health.v1.Health/"
#: grpcio-health-checking's asyncio servicer (its stubs do not show the `aio` module).
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


@attrs.frozen
class GrpcFace:
    """A serving gRPC face: its port, and what it runs in trio now."""

    port: int
    bridge: Bridge

    def statistics(self) -> BridgeStatistics:
        """Calls and watches running in trio now (0 when idle)."""
        return self.bridge.statistics()


@asynccontextmanager
async def open_grpc(node: Node, broker: Address, host: str, port: int, *,
                    token: bytes | None, tls: tuple[str, str] | None) -> AsyncIterator[GrpcFace]:
    """Serve the gRPC API on host:port until the block exits.

    Raises:
        ConfigError: the TLS files cannot be read, or the address cannot be bound.
    """
    credentials = _credentials(tls)
    aio = AioThread("gotask-grpc")
    try:
        bridge = Bridge(aio)
        service = GoTaskService(bridge, NodeCalls(node, broker))
        # Calls that arrive before the bridge serves wait in the loop for it.
        server, healthy, bound = await aio.call(_start, service, _address(host, port),
                                                token, credentials)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.serve)
            try:
                yield GrpcFace(bound, bridge)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(GRACE_S + 5):
                    await aio.call(_stop, server, healthy)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await aio.aclose()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _credentials(tls: tuple[str, str] | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    cert, key = tls
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the gRPC TLS file {exc.filename}: {exc.strerror}"
                          ) from None
    return grpc.ssl_server_credentials([pair])


async def _start(service: GoTaskService, address: str, token: bytes | None,
                 credentials: grpc.ServerCredentials | None
                 ) -> tuple[grpc.aio.Server, Any, int]:
    """In the loop: build, bind and start the server."""
    server = grpc.aio.server(
        interceptors=[] if token is None else [_TokenCheck(token)],
        options=[("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=RPCS_MAX)
    pb_grpc.add_GoTaskServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    healthy = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    try:
        bound = (server.add_insecure_port(address) if credentials is None
                 else server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        raise ConfigError(f"cannot serve gRPC on {address}: {exc}") from None
    await server.start()
    for name in ("", SERVICE):
        await healthy.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, healthy, bound


async def _stop(server: grpc.aio.Server, healthy: Any) -> None:
    await healthy.enter_graceful_shutdown()
    await server.stop(GRACE_S)


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


class _TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Lets a call through only with `authorization: Bearer <token>` (health: always)."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIX):
            return handler
        given = next((str(v) for k, v in details.invocation_metadata or ()
                      if k == "authorization"), "")
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return handler
        return _refusal(handler)


async def _refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    context.set_trailing_metadata((("gotask-error", "urn:gotask:error:AuthenticationError"),))
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "AuthenticationError: a valid bearer token is required")


def _refusal(handler: Handler) -> Handler:
    """A handler of the same kind as `handler` that refuses the call."""
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
            }[(handler.request_streaming, handler.response_streaming)]
    return make(_refuse, request_deserializer=handler.request_deserializer,  # type: ignore[operator]
                response_serializer=handler.response_serializer)
