"""The web console over a real socket (httpx, trio-websocket): login, session cookie,
CSRF, CSP, escaping, every page, the websocket's pushes and its coalescing."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from gotask._app import App, pack_args
from gotask._job import JobRecord
from gotask._protocol import (
    CountQueues,
    GetJobs,
    JobsReply,
    ListNodes,
    NodesReply,
    QueueCount,
    QueuesReply,
)
from gotask._server import Server, open_server
from gotask.runtime.world import sim_world
from gotask.web.live import PAGES_MAX, Live, Page

from .conftest import TOKEN, node_config, tls_files

PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


async def _log_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    page = await client.get("/console/login")
    return await client.post("/console/login",
                             data={"csrf": _csrf(page.text), "token": token})


@pytest.fixture
async def console(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=str(server.http_url), timeout=30) as client:
        assert (await _log_in(client)).status_code == 302
        yield client


async def _api(server: Server, method: str, path: str, **kw: Any) -> Any:
    async with httpx.AsyncClient(base_url=str(server.http_url), timeout=30,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        r = await api.request(method, path, **kw)
        assert r.status_code < 300, r.text
        return r.json()


async def _dead_job(server: Server, flag: Path | None = None) -> str:
    """A dead job; retried once `flag` exists, it succeeds."""
    spec = {"task": "fails_unless", "args": [str(flag), "no flag"]} if flag else {
        "task": "always_fails"}
    job_id: str = (await _api(server, "POST", "/api/v1/jobs", json=spec))["id"]
    job = await _api(server, "GET", f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 20})
    assert job["state"] == "dead"
    return job_id


async def test_pages_need_a_login_and_the_api_still_needs_the_bearer(server: Server) -> None:
    async with httpx.AsyncClient(base_url=str(server.http_url)) as client:
        for path in ("/", "/console/", "/console/jobs", "/console/dlq", "/console/jobs/x"):
            r = await client.get(path)
            assert r.status_code == 302 and r.headers["location"].startswith("/console"), path
        assert (await client.post("/console/dlq/retry")).headers["location"] == "/console/login"
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(server.http_url.replace("http", "ws") + "/console/ws"):
                pass
        r = await _log_in(client, "not-the-token-0123456789")
        assert r.status_code == 401 and "not the token" in r.text
        assert (await client.get("/console/")).status_code == 302
        assert (await _log_in(client)).status_code == 302
        assert (await client.get("/console/")).status_code == 200
        assert (await client.get("/api/v1/queues")).status_code == 401  # a cookie is no bearer


async def test_the_session_cookie_and_the_headers(server: Server) -> None:
    async with httpx.AsyncClient(base_url=str(server.http_url)) as client:
        r = await _log_in(client)
        cookie = r.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
            assert flag in cookie
        assert "Secure" not in cookie  # plain HTTP here; see the TLS test below
        assert TOKEN not in cookie
        page = await client.get("/console/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text and "onclick" not in page.text


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        server: Server, console: httpx.AsyncClient, tmp_path: Path) -> None:
    job_id = await _dead_job(server, tmp_path / "flag")
    (tmp_path / "flag").touch()
    for headers in ({}, {"X-CSRF-Token": "0" * 48}):
        r = await console.post(f"/console/dlq/{job_id}/retry", headers=headers)
        assert r.status_code == 403
    assert (await _api(server, "GET", f"/api/v1/jobs/{job_id}"))["state"] == "dead"
    token = _csrf((await console.get("/console/dlq")).text)
    r = await console.post(f"/console/dlq/{job_id}/retry", data={"csrf": token})
    assert r.status_code == 302
    job = await _api(server, "GET", f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 20})
    assert job["state"] == "succeeded"
    assert "1 dead job retried" in (await console.get(r.headers["location"])).text


async def test_job_supplied_strings_are_escaped(server: Server,
                                                console: httpx.AsyncClient) -> None:
    job = await _api(server, "POST", "/api/v1/jobs",
                     json={"task": "echo", "args": list(PAYLOADS), "kwargs": {"k": PAYLOADS[1]}})
    await _api(server, "GET", f"/api/v1/jobs/{job['id']}/wait", params={"timeout_s": 20})
    html = (await console.get(f"/console/jobs/{job['id']}")).text
    for raw in ("<script>alert", "<img src=x", '"><img'):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html


async def test_every_page_renders(server: Server, console: httpx.AsyncClient) -> None:
    job_id = await _dead_job(server)
    for path in ("/console/", "/console/queues", "/console/nodes", "/console/cron",
                 "/console/dlq", "/console/jobs", "/console/jobs?state=dead&queue=default",
                 "/console/jobs?task=always_fails", "/console/jobs?state=bogus",
                 f"/console/jobs/{job_id}"):
        r = await console.get(path)
        assert r.status_code == 200, path
    assert job_id in (await console.get("/console/jobs?state=dead")).text
    assert job_id not in (await console.get("/console/jobs?task=add")).text
    r = await console.get("/console/jobs", params={"id": job_id})
    assert r.headers["location"] == f"/console/jobs/{job_id}"
    assert (await console.get("/console/jobs/NOSUCHJOB")).status_code == 404
    assert "web1" in (await console.get("/console/nodes")).text


async def test_the_websocket_pushes_a_jobs_progress(server: Server,
                                                    console: httpx.AsyncClient) -> None:
    job = await _api(server, "POST", "/api/v1/jobs", json={"task": "steps", "args": [20, 0.1]})
    url = f"{str(server.http_url).replace('http', 'ws')}/console/ws?job={job['id']}"
    cookie = f"gotask_console={console.cookies['gotask_console']}".encode()
    seen: list[float] = []
    async with open_websocket_url(url, extra_headers=[(b"cookie", cookie)]) as ws:
        assert "history" in json.loads(await ws.get_message())
        with trio.fail_after(20):
            while not seen or seen[-1] < 1:
                msg = json.loads(await ws.get_message())
                assert {"queues", "nodes", "point"} <= msg.keys()
                seen.append(msg["job"]["progress"] if msg["job"]["state"] != "succeeded" else 1)
    assert len(set(seen)) >= 3 and seen == sorted(seen)
    with pytest.raises(ConnectionRejected):
        async with open_websocket_url(url, extra_headers=[(b"cookie", cookie),
                                                          (b"origin", b"http://evil.example")]):
            pass


async def test_a_page_gets_only_the_newest_snapshot() -> None:
    page = Page(None)
    for i in range(5):
        page.offer({"n": i})
    assert await page.next() == {"n": 4}
    with trio.move_on_after(0.05) as scope:
        await page.next()
    assert scope.cancelled_caught


async def test_without_a_token_the_console_is_open_but_posts_need_the_csrf_token() -> None:
    async with open_server(node_config()) as srv, httpx.AsyncClient(
            base_url=str(srv.http_url)) as client:
        page = await client.get("/console/")
        assert page.status_code == 200 and "Log out" not in page.text
        assert (await client.get("/console/login")).headers["location"] == "/console/"
        assert (await client.post("/console/dlq/retry")).status_code == 403
        token = _csrf((await client.get("/console/dlq")).text)
        r = await client.post("/console/dlq/retry", data={"csrf": token})
        assert r.status_code == 302


async def test_the_session_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    files, ssl_ctx = tls_files(tmp_path)
    config = node_config(http_tls=files, http_token=TOKEN.encode())
    async with open_server(config) as srv, httpx.AsyncClient(
            base_url=str(srv.http_url), verify=ssl_ctx) as client:
        r = await _log_in(client)
        assert r.status_code == 302 and "Secure" in r.headers["set-cookie"]


async def test_pause_and_resume_a_queue_from_the_queues_page(
        server: Server, console: httpx.AsyncClient) -> None:
    await _api(server, "POST", "/api/v1/jobs", json={"task": "add", "args": [1, 2]})
    page = await console.get("/console/queues")
    assert '/console/queues/default/pause"' in page.text
    assert (await console.post("/console/queues/default/pause")).status_code == 403
    r = await console.post("/console/queues/default/pause", data={"csrf": _csrf(page.text)})
    assert r.status_code == 302
    queues = (await _api(server, "GET", "/api/v1/queues"))["queues"]
    assert [q["paused"] for q in queues if q["name"] == "default"] == [True]
    page = await console.get("/console/queues")
    assert "queue default paused" in page.text and '/console/queues/default/resume"' in page.text
    await console.post("/console/queues/default/resume", data={"csrf": _csrf(page.text)})
    queues = (await _api(server, "GET", "/api/v1/queues"))["queues"]
    assert [q["paused"] for q in queues if q["name"] == "default"] == [False]


class _FakeBroker:
    """Answers the sampler's requests from fixed records, counting them."""

    def __init__(self) -> None:
        self.asked: list[type] = []
        self.job = JobRecord("J1", "steps", "default", pack_args([3, 0.1]), 0, "active",
                             1.0, 1.0, 3, 60.0, progress=0.5)

    async def __call__(self, cmd: Any, timeout_s: float = 30.0) -> Any:
        self.asked.append(type(cmd))
        if isinstance(cmd, CountQueues):
            return QueuesReply((QueueCount("default", "active", 1),
                                QueueCount("default", "dead", 2)), ("slow",))
        if isinstance(cmd, ListNodes):
            return NodesReply(())
        assert isinstance(cmd, GetJobs)
        return JobsReply(tuple(self.job if i == "J1" else None for i in cmd.ids))


async def test_one_sample_serves_every_page_with_one_request_of_each_kind() -> None:
    broker = _FakeBroker()
    live = Live(broker, sim_world(1))
    await live.sample()  # no page: only the chart point
    assert broker.asked == [CountQueues] and len(live.history) == 1
    pages = [live.open_page(None) for _ in range(20)] + [live.open_page("J1"),
                                                          live.open_page("NOPE")]
    broker.asked.clear()
    await live.sample()
    assert broker.asked == [CountQueues, ListNodes, GetJobs]
    first = await pages[0].next()
    assert first["queues"] == [{"name": "default", "counts": {"active": 1, "dead": 2},
                                "paused": False},
                               {"name": "slow", "counts": {}, "paused": True}]
    assert "job" not in first and first["point"] == list(live.history[-1])
    assert (await pages[-2].next())["job"]["progress"] == 0.5
    assert (await pages[-1].next())["job"] is None
    for page in pages:
        live.close_page(page)
    assert not live.pages


async def test_pages_are_bounded() -> None:
    live = Live(_FakeBroker(), sim_world(1))
    for _ in range(PAGES_MAX):
        live.open_page(None)
    with pytest.raises(OverflowError, match=f"more than {PAGES_MAX}"):
        live.open_page(None)


async def test_the_cron_page_pauses_resumes_and_runs_an_entry() -> None:
    cron_app = App("console-cron")
    cron_app.task(name="hello")(_hello)
    cron_app.add_cron("hourly-hello", "hello", "0 * * * *")
    async with open_server(node_config(app=cron_app)) as srv, httpx.AsyncClient(
            base_url=str(srv.http_url)) as client:
        page = await client.get("/console/cron")
        assert "hourly-hello" in page.text and "0 * * * *" in page.text
        token = _csrf(page.text)
        for action, shown in (("pause", "paused"), ("resume", "active")):
            r = await client.post(f"/console/cron/hourly-hello/{action}", data={"csrf": token})
            assert r.status_code == 302
            page = await client.get("/console/cron")
            assert f"cron entry hourly-hello {action}d" in page.text
            assert f"<td>{shown}</td>" in page.text
        r = await client.post("/console/cron/hourly-hello/run", data={"csrf": token})
        job_page = await client.get(r.headers["location"])
        assert job_page.status_code == 200 and '<dd id="job-task">hello</dd>' in job_page.text


async def _hello() -> str:
    return "hello"
