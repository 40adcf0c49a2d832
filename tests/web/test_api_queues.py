"""Queue operations of the REST API over a real socket: pause and resume."""

from __future__ import annotations

import httpx

PROBLEM = "application/problem+json"


async def queues(http: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    return {q["name"]: q for q in (await http.get("/api/v1/queues")).json()["queues"]}


async def test_a_paused_queue_takes_jobs_and_runs_them_once_resumed(
        http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/queues/default/pause")
    assert r.status_code == 200 and r.json() == {"name": "default", "paused": True}
    assert (await queues(http))["default"] == {"name": "default", "counts": {},
                                                "paused": True, "oldest_ready_age_s": None}
    job_id = (await http.post("/api/v1/jobs", json={"task": "add", "args": [2, 3]})).json()["id"]
    held = (await http.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 1})).json()
    assert held["state"] == "queued"
    waiting = (await queues(http))["default"]
    assert waiting["counts"] == {"queued": 1}
    assert waiting["oldest_ready_age_s"] >= 0.5  # it waited the 1 s wait above
    r = await http.post("/api/v1/queues/default/resume")
    assert r.status_code == 200 and r.json() == {"name": "default", "paused": False}
    done = (await http.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout_s": 20})).json()
    assert (done["state"], done["result"]) == ("succeeded", 5)
    assert (await queues(http))["default"]["paused"] is False


async def test_pausing_twice_and_resuming_an_unpaused_queue_are_harmless(
        http: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await http.post("/api/v1/queues/idle/pause")).json()["paused"] is True
    assert [n for n, q in (await queues(http)).items() if q["paused"]] == ["idle"]
    for _ in range(2):
        assert (await http.post("/api/v1/queues/idle/resume")).json()["paused"] is False
    assert "idle" not in await queues(http)  # no jobs and not paused: not listed


async def test_a_bad_queue_name_is_a_problem_document(http: httpx.AsyncClient) -> None:
    r = await http.post(f"/api/v1/queues/{'q' * 129}/pause")
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM
    assert r.json()["title"] == "BadRequest" and "queue" in r.json()["detail"]
    r = await http.get("/api/v1/queues/default/pause")
    assert r.status_code == 405


async def test_jobs_are_listed_by_task(http: httpx.AsyncClient) -> None:
    jobs = [{"task": t, "args": [1, 2] if t == "add" else [], "delay_s": 3600}
            for t in ("add", "blob", "add")]
    ids = (await http.post("/api/v1/jobs/batch", json={"jobs": jobs})).json()["ids"]
    page = (await http.get("/api/v1/jobs", params={"task": "add", "limit": 1})).json()
    assert [j["id"] for j in page["jobs"]] == [ids[0]] and page["cursor"] == ids[0]
    page = (await http.get("/api/v1/jobs", params={"task": "add", "cursor": ids[0]})).json()
    assert [j["id"] for j in page["jobs"]] == [ids[2]] and page["cursor"] is None
    page = (await http.get("/api/v1/jobs", params={"task": "blob", "state": "queued"})).json()
    assert page["jobs"] == []
    r = await http.get("/api/v1/jobs", params={"task": "x" * 129})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM
