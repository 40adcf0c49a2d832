"""The REST API over a real socket: every route, errors as problem documents."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import httpx
import trio

from gotask._errors import StorageUnavailable
from gotask._server import Server
from gotask.web.app import create_app
from gotask.web.serve import serve_http

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]


async def test_enqueue_wait_and_get(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/jobs", json={"task": "add", "args": [2, 3]})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = await http.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 20})
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["result"], body["args"]) == ("succeeded", 5, [2, 3])
    assert (await http.get(f"/api/v1/jobs/{job_id}")).json()["result"] == 5


async def test_json_args_and_kwargs_reach_the_task(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/jobs", json={"task": "echo", "args": [1, "a", None],
                                              "kwargs": {"k": {"n": [1.5]}}})
    job = (await http.get(f"/api/v1/jobs/{r.json()['id']}/wait")).json()
    assert job["result"] == {"args": [1, "a", None], "kwargs": {"k": {"n": [1.5]}}}
    assert job["kwargs"] == {"k": {"n": [1.5]}}


async def test_bytes_results_come_back_as_base64(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/jobs", json={"task": "blob"})
    job = (await http.get(f"/api/v1/jobs/{r.json()['id']}/wait")).json()
    assert job["result"] == {"$base64": "AP9ieXRlcw=="}


async def test_idempotency_key_and_options(http: httpx.AsyncClient) -> None:
    spec = {"task": "add", "args": [1, 1], "idempotency_key": "k1", "queue": "default",
            "priority": 5, "delay_s": 3600, "max_attempts": 2, "timeout_s": 5,
            "result_ttl_s": 60}
    first = (await http.post("/api/v1/jobs", json=spec)).json()
    second = (await http.post("/api/v1/jobs", json=spec)).json()
    assert first["created"] and not second["created"] and first["id"] == second["id"]
    job = (await http.get(f"/api/v1/jobs/{first['id']}")).json()
    assert (job["state"], job["priority"], job["max_attempts"]) == ("scheduled", 5, 2)
    r = await http.post(f"/api/v1/jobs/{first['id']}/cancel")
    assert r.json() == {"id": first["id"], "state": "cancelled"}


async def test_batch_enqueue_and_list_pages(http: httpx.AsyncClient) -> None:
    jobs = [{"task": "add", "args": [i, 0], "delay_s": 3600} for i in range(5)]
    r = await http.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201 and all(r.json()["created"])
    ids = r.json()["ids"]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"state": "scheduled", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/api/v1/jobs", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


async def test_batch_is_all_or_none(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/jobs/batch", json={"jobs": [
        {"task": "add", "args": [1, 2]}, {"task": "nope"}]})
    assert r.status_code == 422
    assert r.json()["title"] == "TaskNotFound"
    assert (await http.get("/api/v1/jobs")).json()["jobs"] == []


async def test_queues_dlq_and_nodes(http: httpx.AsyncClient) -> None:
    dead = [(await http.post("/api/v1/jobs", json={"task": "always_fails"})).json()["id"]
            for _ in range(3)]
    for job_id in dead:
        job = (await http.get(f"/api/v1/jobs/{job_id}/wait")).json()
        assert job["state"] == "dead" and job["error_type"] == "ValueError"
    queues = (await http.get("/api/v1/queues")).json()["queues"]
    assert queues == [{"name": "default", "counts": {"dead": 3}, "paused": False,
                       "oldest_ready_age_s": None}]
    page = (await http.get("/api/v1/dlq", params={"queue": "default"})).json()
    assert sorted(j["id"] for j in page["jobs"]) == sorted(dead)
    assert (await http.post(f"/api/v1/dlq/{dead[0]}/retry")).json() == {"count": 1}
    assert (await http.delete(f"/api/v1/dlq/{dead[1]}")).json() == {"count": 1}
    assert (await http.get(f"/api/v1/jobs/{dead[0]}/wait")).json()["state"] == "dead"
    assert (await http.post("/api/v1/dlq/retry")).json() == {"count": 2}
    for job_id in (dead[0], dead[2]):
        await http.get(f"/api/v1/jobs/{job_id}/wait")
    assert (await http.delete("/api/v1/dlq")).json() == {"count": 2}
    assert (await http.get("/api/v1/dlq")).json() == {"jobs": [], "cursor": None}
    nodes = (await http.get("/api/v1/nodes")).json()["nodes"]
    assert [n["node"] for n in nodes] == ["web1"]


async def test_bad_requests_are_problem_documents(http: httpx.AsyncClient) -> None:
    cases = [
        (http.post("/api/v1/jobs", content=b"{not json"), 400, "BadRequest"),
        (http.post("/api/v1/jobs", json=[1]), 400, "BadRequest"),
        (http.post("/api/v1/jobs", json={"task": "add", "colour": 1}), 400, "BadRequest"),
        (http.post("/api/v1/jobs", json={"task": "add", "priority": "x"}), 400, "BadRequest"),
        (http.post("/api/v1/jobs", json={"task": "add", "delay_s": -1}), 400, "BadRequest"),
        (http.post("/api/v1/jobs", json={"task": "nope"}), 422, "TaskNotFound"),
        (http.post("/api/v1/jobs", json={"task": "add", "args": [1]}), 422, "InvalidArguments"),
        (http.get("/api/v1/jobs", params={"limit": 0}), 400, "BadRequest"),
        (http.get("/api/v1/jobs", params={"state": "odd"}), 400, "BadRequest"),
        (http.get("/api/v1/jobs/nope"), 404, "JobNotFound"),
        (http.get("/api/v1/jobs/nope/wait", params={"timeout_s": "x"}), 400, "BadRequest"),
        (http.post("/api/v1/jobs/nope/cancel"), 404, "JobNotFound"),
        (http.get("/api/v1/nothing"), 404, "NotFound"),
        (http.post("/api/v1/jobs", content=b"x" * (2 << 20)), 413, "RequestEntityTooLarge"),
    ]
    for request, status, title in cases:
        r = await request
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"] == title and r.json()["status"] == status
        assert "Traceback" not in r.text


async def test_wait_times_out_with_the_job_as_it_is(http: httpx.AsyncClient) -> None:
    job_id = (await http.post("/api/v1/jobs", json={"task": "sleepy", "args": [30]})).json()["id"]
    r = await http.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 0.2})
    assert r.status_code == 200 and r.json()["state"] in ("queued", "active")
    assert (await http.post(f"/api/v1/jobs/{job_id}/cancel")).json()["state"] in (
        "cancelled", "active")


async def test_openapi_is_served_and_matches_docs(http: httpx.AsyncClient) -> None:
    served = (await http.get("/api/v1/openapi.json")).json()
    assert served["openapi"].startswith("3.1")
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text())


async def test_health_is_open_and_says_little(server: Server) -> None:
    async with httpx.AsyncClient(base_url=str(server.http_url)) as anon:
        for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
            r = await anon.get(path)
            assert r.status_code == 200 and r.json() == {"status": status}
        assert TOKEN not in (await anon.get("/healthz")).text


async def test_readyz_says_unavailable_when_storage_does_not_answer() -> None:
    async def failing_call(cmd: object, timeout_s: float = 30.0) -> object:
        raise StorageUnavailable("redis at 127.0.0.1:1 is down")

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(
            serve_http, create_app(failing_call, None), "127.0.0.1", 0, tls=None,
            shutdown=shutdown))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/readyz")
            assert (r.status_code, r.json()) == (503, {"status": "unavailable"})
            assert (await client.get("/healthz")).status_code == 200
            r = await client.get("/api/v1/queues")
            assert r.status_code == 503 and r.json()["title"] == "StorageUnavailable"
        shutdown.set()


async def test_a_refused_request_body_does_not_stall_the_connection(server: Server) -> None:
    # Regression (found by schemathesis): a 405 sent before the body arrived left the body
    # unread, and the next request on the same keep-alive connection hung.
    assert server.http_port is not None
    body = b'{"jobs": [{"task": ""}]}'
    for auth, status in ((f"Bearer {TOKEN}", b"HTTP/1.1 405"), ("Bearer nope", b"HTTP/1.1 401")):
        head = (f"PUT /api/v1/jobs/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
        stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
        async with stream:
            seen = b""
            for i in range(2):
                await stream.send_all(head)  # the body follows apart, as http.client sends it
                await trio.sleep(0.2)
                try:
                    await stream.send_all(body)
                except trio.BrokenResourceError:
                    break  # the server closed the connection after its answer: fine
                with trio.fail_after(10):
                    while seen.count(status) < i + 1:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        seen += data
                if b"connection: close" in seen.lower():
                    break
            assert seen.count(status) >= 1
