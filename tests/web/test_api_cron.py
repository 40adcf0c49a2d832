"""Cron entries over the REST API, on a real socket: list, pause, resume, run."""

from __future__ import annotations

import httpx

PROBLEM = "application/problem+json"


async def entry(http: httpx.AsyncClient, name: str) -> dict[str, object]:
    entries = (await http.get("/api/v1/cron")).json()["entries"]
    (found,) = [e for e in entries if e["name"] == name]
    return found


async def test_cron_entries_are_listed_paused_resumed_and_run(http: httpx.AsyncClient) -> None:
    listed = await entry(http, "new-year")
    assert (listed["task"], listed["schedule"], listed["zone"]) == ("add", "0 3 1 1 *", "UTC")
    assert listed["declared"] and listed["current"] and not listed["paused"]
    assert listed["node"] == "web1" and isinstance(listed["next_tick"], int)
    r = await http.post("/api/v1/cron/new-year/pause")
    assert r.status_code == 200 and r.json() == {"name": "new-year", "paused": True}
    assert (await entry(http, "new-year"))["paused"] is True
    r = await http.post("/api/v1/cron/new-year/resume")
    assert r.json() == {"name": "new-year", "paused": False}
    assert (await entry(http, "new-year"))["paused"] is False
    r = await http.post("/api/v1/cron/new-year/run")
    assert r.status_code == 201 and r.json()["name"] == "new-year"
    job = (await http.get(f"/api/v1/jobs/{r.json()['id']}")).json()
    assert (job["task"], job["queue"], job["args"]) == ("add", "cron", [1, 1])


async def test_an_unknown_entry_is_a_404_problem(http: httpx.AsyncClient) -> None:
    for action in ("pause", "resume", "run"):
        r = await http.post(f"/api/v1/cron/nope/{action}")
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert r.json()["title"] == "CronEntryNotFound" and "nope" in r.json()["detail"]
