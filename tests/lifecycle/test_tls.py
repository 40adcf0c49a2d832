"""TLS end to end with real processes: a node serving TLS (requiring client
certificates), a node joining it over TLS, and clients with and without the CA."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
import trustme

import gotask

from .. import processes
from ..processes import free_port, stop


def write_pems(tmp_path: Path) -> tuple[trustme.CA, dict[str, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    return ca, {k: str(v) for k, v in paths.items()}


def tls_client(port: int, context: ssl.SSLContext | None,
               node: processes.subprocess.Popen[bytes]) -> gotask.Client:
    deadline = time.monotonic() + 20
    while True:
        client = gotask.Client([f"127.0.0.1:{port}"], connect_rounds=1, ssl_context=context)
        try:
            client.queues()
            return client
        except gotask.GoTaskError:
            client.close()
            assert node.poll() is None, node.stderr.read() if node.stderr else b""
            assert time.monotonic() < deadline, "node did not answer over TLS"
            time.sleep(0.1)


def test_clients_and_a_joined_node_speak_tls_with_client_certificates(tmp_path: Path) -> None:
    ca, pem = write_pems(tmp_path)
    tls = ("--tls-cert", pem["cert"], "--tls-key", pem["key"])
    owner_port, worker_port = free_port(), free_port()
    owner = processes.start_node("tests.lifecycle.killapp", owner_port, "--name", "owner",
                                 *tls, "--tls-client-ca", pem["ca"])
    procs = [owner]
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.load_cert_chain(pem["cert"], pem["key"])
        client = tls_client(owner_port, context, owner)
        client.pause()
        worker = processes.start_node("tests.lifecycle.killapp", worker_port, "--name",
                                      "worker", *tls, "--tls-ca", pem["ca"],
                                      "--join", f"127.0.0.1:{owner_port}")
        procs.append(worker)
        tls_client(worker_port, context, worker).close()
        job_id = client.enqueue("slow", 0.1)
        assert client.wait(job_id, timeout_s=20) == worker.pid  # leased over the TLS link
        no_cert = ssl.create_default_context()
        ca.configure_trust(no_cert)
        for refused in (None, no_cert, ssl.create_default_context()):
            with gotask.Client([f"127.0.0.1:{owner_port}"], connect_rounds=1,
                               ssl_context=refused, connect_timeout_s=3) as other, \
                    pytest.raises(gotask.GoTaskError):
                other.queues()
        client.close()
    finally:
        stop(*procs)


def test_an_unreadable_certificate_is_one_line_and_exit_1(tmp_path: Path) -> None:
    node = processes.start_node("tests.lifecycle.killapp", free_port(), "--tls-cert",
                                str(tmp_path / "no.pem"), "--tls-key", str(tmp_path / "no.key"))
    try:
        assert node.wait(timeout=20) == 1
        assert node.stderr is not None
        err = node.stderr.read().decode().strip()
    finally:
        stop(node)
    assert err.startswith("gotask node: cannot load --tls-cert/--tls-key") and "\n" not in err
