"""A live node with its HTTP face on a real socket, and an httpx client for it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from gotask._server import Server, open_server
from gotask.config import NodeConfig

from .webapp import app

TOKEN = "test-token-0123456789abcdef"


def node_config(**kwargs: Any) -> NodeConfig:
    """A small node serving HTTP on a free loopback port."""
    defaults: dict[str, Any] = dict(app=app, name="web1", listen=None, concurrency=4,
                                    lease_timeout_s=10, heartbeat_s=2, grace_s=2,
                                    http=("127.0.0.1", 0))
    return NodeConfig(**(defaults | kwargs))


def tls_files(folder: Path) -> tuple[tuple[str, str], ssl.SSLContext]:
    """A certificate for 127.0.0.1 and its key written to `folder` (for `http_tls`), and a
    client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ssl_ctx = ssl.create_default_context()
    ca.configure_trust(ssl_ctx)
    return (str(cert_path), str(key_path)), ssl_ctx


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with open_server(node_config(http_token=TOKEN.encode())) as srv:
        yield srv


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    assert server.http_url is not None
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
