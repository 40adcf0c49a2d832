"""`gotask node --grpc` as an operator runs it: a real process, settings, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from gotask._node_settings import resolve
from gotask.v1 import gotask_pb2 as pb
from gotask.v1 import gotask_pb2_grpc as pb_grpc
from tests.processes import ROOT, free_port, start_node, stop

from .conftest import AUTH, TOKEN
from .test_api import json_job


def wait_serving(stub: pb_grpc.GoTaskStub, node: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            stub.ListQueues(pb.ListQueuesRequest(), metadata=AUTH, timeout=2)
            return
        except grpc.RpcError:
            assert node.poll() is None, node.stderr.read() if node.stderr else b""
            assert time.monotonic() < deadline, "the gRPC face did not start"
            time.sleep(0.1)


@pytest.mark.slow
def test_a_node_process_serves_grpc_and_stops_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "GOTASK_HTTP_TOKEN": TOKEN, "GOTASK_GRPC": f"127.0.0.1:{port}"}
    node = start_node("tests.web.webapp", free_port(), env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GoTaskStub(channel)
            wait_serving(stub, node)
            [job_id] = stub.Enqueue(pb.EnqueueRequest(jobs=[json_job("add", 2, 2)]),
                                    metadata=AUTH, timeout=10).ids
            records = list(stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=AUTH,
                                         timeout=30))
            assert records[-1].state == "succeeded"
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        stop(node)


def test_grpc_settings_come_from_flags_and_env() -> None:
    env = {"GOTASK_GRPC": "127.0.0.1:7460", "GOTASK_GRPC_TLS_CERT": "c.pem"}
    s = resolve({"app": "x", "grpc": "127.0.0.1:7461"}, env)
    assert (s["grpc"], s["grpc_tls_cert"], s["grpc_tls_key"]) == ("127.0.0.1:7461", "c.pem", None)


def test_a_node_without_grpc_loads_no_grpc() -> None:
    code = ("import sys, gotask._server, gotask._node_main, gotask.cli; "
            "print([m for m in sys.modules if m == 'grpc' or m.startswith('gotask.v1')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_half_a_tls_pair_is_refused() -> None:
    from gotask._errors import ConfigError
    from gotask._node_main import config_from_settings

    s = resolve({"app": "tests.web.webapp", "grpc": "127.0.0.1:0",
                 "grpc_tls_cert": "c.pem"}, {})
    with pytest.raises(ConfigError, match="--grpc-tls-cert and --grpc-tls-key go together"):
        config_from_settings(s)
