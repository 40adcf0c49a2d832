"""Bearer-token auth on the HTTP face, and the refusal to serve off loopback without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gotask._errors import ConfigError
from gotask._server import Server, open_server
from gotask.web.serve import read_token

from .conftest import TOKEN, node_config, tls_files

ROUTES = [("GET", "/api/v1/queues"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/openapi.json"),
          ("DELETE", "/api/v1/dlq"), ("GET", "/api/v1/jobs/x")]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789abc",
                                    f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
async def test_missing_or_wrong_token_is_refused(server: Server, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    async with httpx.AsyncClient(base_url=str(server.http_url), headers=headers) as client:
        for method, path in ROUTES:
            r = await client.request(method, path, json={"task": "add"})
            assert r.status_code == 401, (method, path)
            assert r.json()["title"] == "AuthenticationError"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in r.text
        assert (await client.get("/api/v1/queues")).status_code == 401
    async with httpx.AsyncClient(base_url=str(server.http_url),
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as good:
        assert (await good.get("/api/v1/queues")).json() == {"queues": []}


def test_non_loopback_http_needs_a_token_or_insecure() -> None:
    with pytest.raises(ConfigError, match="without a token"):
        node_config(http=("0.0.0.0", 0))
    assert node_config(http=("0.0.0.0", 0), insecure=True).http == ("0.0.0.0", 0)
    assert node_config(http=("0.0.0.0", 0), http_token=TOKEN.encode()).http_token


def test_token_is_never_in_the_config_repr() -> None:
    assert TOKEN not in repr(node_config(http_token=TOKEN.encode()))


def test_read_token_from_file_or_env(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_token(str(path), {}) == TOKEN.encode()
    assert read_token(None, {"GOTASK_HTTP_TOKEN": TOKEN}) == TOKEN.encode()
    assert read_token(None, {}) is None
    for bad in ("short", "has a space in it 0123456789"):
        path.write_text(bad)
        with pytest.raises(ConfigError) as info:
            read_token(str(path), {})
        assert bad not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(str(path) + ".missing", {})


async def test_loopback_without_a_token_is_open() -> None:
    async with open_server(node_config()) as srv, \
            httpx.AsyncClient(base_url=str(srv.http_url)) as client:
        assert (await client.get("/api/v1/queues")).status_code == 200


def test_the_node_process_refuses_a_public_http_bind_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOTASK_HTTP_TOKEN")}
    run = subprocess.run(
        [sys.executable, "-m", "gotask.cli", "node", "--app", "tests.web.webapp",
         "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
        timeout=60)
    assert run.returncode == 1
    assert "refusing to serve HTTP on 0.0.0.0 without a token" in run.stderr


async def test_https_with_a_certificate(tmp_path: Path) -> None:
    files, ssl_ctx = tls_files(tmp_path)
    async with open_server(node_config(http_tls=files)) as srv:
        assert str(srv.http_url).startswith("https://")
        async with httpx.AsyncClient(base_url=str(srv.http_url), verify=ssl_ctx) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
