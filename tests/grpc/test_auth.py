"""Auth, TLS, the standard health and reflection services, binding rules and shutdown."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest
import trio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gotask._errors import ConfigError
from gotask._server import Server, open_server
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc

from .conftest import TOKEN, call, collect, node_config
from .test_api import json_job

BAD = [(), (("authorization", "Bearer wrong-token-0123456789"),),
       (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),)]


@pytest.mark.parametrize("metadata", BAD)
async def test_unary_calls_need_the_token(stub: pb_grpc.GoTaskStub, metadata: tuple) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await call(stub.Enqueue, pb.EnqueueRequest(jobs=[json_job("add", 1, 2)]),
                   metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in caught.value.details()
    assert (await call(stub.ListQueues, pb.ListQueuesRequest())).queues == []


@pytest.mark.parametrize("metadata", BAD[:2])
async def test_streams_need_the_token(stub: pb_grpc.GoTaskStub, metadata: tuple) -> None:
    for method, request in [(stub.WatchJob, pb.WatchJobRequest(id="x")),
                            (stub.EnqueueStream, iter([pb.EnqueueRequest()]))]:
        with pytest.raises(grpc.RpcError) as caught:
            await collect(method(request, metadata=metadata, timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_open_and_reflection_names_the_service(server: Server) -> None:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "gotask.v1.GoTask"):
            reply = await call(check, health_pb2.HealthCheckRequest(service=service), metadata=())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError):  # reflection needs the token like the API
            await collect(info(iter([request]), metadata=(), timeout=10))
        [reply] = await collect(info(iter([request]), metadata=(
            ("authorization", f"Bearer {TOKEN}"),), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"gotask.v1.GoTask", "grpc.health.v1.Health"} <= names


def test_off_loopback_needs_a_token_or_insecure() -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve gRPC on 0\.0\.0\.0 without a token"):
        node_config(grpc=("0.0.0.0", 0), http_token=None)
    assert node_config(grpc=("0.0.0.0", 0), http_token=None, insecure=True).grpc is not None
    assert node_config(grpc=("0.0.0.0", 0)).grpc is not None


async def test_tls(tmp_path: trio.Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    config = node_config(grpc_tls=(str(cert_path), str(key_path)))
    async with open_server(config) as server:
        assert server.grpc_target is not None
        roots = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
        with grpc.secure_channel(server.grpc_target, roots) as channel:
            stub = pb_grpc.GoTaskStub(channel)
            assert (await call(stub.ListQueues, pb.ListQueuesRequest())).queues == []
        with grpc.insecure_channel(server.grpc_target) as channel:  # plaintext is refused
            with pytest.raises(grpc.RpcError) as caught:
                await call(pb_grpc.GoTaskStub(channel).ListQueues, pb.ListQueuesRequest(),
                           timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unreadable_tls_files_are_a_config_error(tmp_path: trio.Path) -> None:
    config = node_config(grpc_tls=(str(tmp_path / "no.pem"), str(tmp_path / "no.key")))
    with pytest.raises(ConfigError, match="cannot read the gRPC TLS file"):
        async with open_server(config):
            pass


async def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = node_config(grpc=("127.0.0.1", taken.getsockname()[1]))
        with pytest.raises(ConfigError, match=r"cannot serve gRPC on 127\.0\.0\.1:"):
            async with open_server(config):
                pass


async def test_the_face_stops_with_the_node() -> None:
    async with open_server(node_config()) as server:
        assert server.grpc is not None
        port = server.grpc.port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GoTaskStub(channel)
            [job_id] = (await call(stub.Enqueue, pb.EnqueueRequest(
                jobs=[json_job("sleepy", 30)]))).ids
            stream = stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=(
                ("authorization", f"Bearer {TOKEN}"),), timeout=60)
            await trio.to_thread.run_sync(next, stream)
    # After the block: the open watch was ended, the port is closed, the thread is gone.
    with pytest.raises(grpc.RpcError) as caught:
        await collect(stream)
    assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert "gotask-grpc" not in {t.name for t in threading.enumerate()}
