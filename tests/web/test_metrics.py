"""/metrics over a real socket, parsed with prometheus-client's own text parser and checked
against a known workload."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gotask._server import Server

N_OK, N_DEAD, N_LATER = 7, 2, 3


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_match_a_known_workload(http: httpx.AsyncClient) -> None:
    ok = [{"task": "add", "args": [i, i]} for i in range(N_OK)]
    dead = [{"task": "always_fails"} for _ in range(N_DEAD)]
    later = [{"task": "add", "args": [0, 0], "queue": "other"} for _ in range(N_LATER)]
    ids = (await http.post("/api/v1/jobs/batch", json={"jobs": ok + dead})).json()["ids"]
    await http.post("/api/v1/jobs/batch", json={"jobs": later})
    for job_id in ids:
        await http.get(f"/api/v1/jobs/{job_id}/wait")
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)

    def jobs(queue: str, state: str) -> float:
        return samples[("gotask_queue_jobs", (("queue", queue), ("state", state)))]

    assert jobs("default", "succeeded") == N_OK
    assert jobs("default", "dead") == N_DEAD
    assert jobs("default", "queued") == jobs("default", "scheduled") == 0
    assert jobs("other", "queued") == N_LATER  # this node does not work "other"
    assert jobs("other", "active") == jobs("other", "dead") == 0

    def age(queue: str) -> float:
        return samples[("gotask_queue_oldest_ready_age_seconds", (("queue", queue),))]

    assert age("default") == 0  # nothing queued
    assert age("other") > 0  # its jobs wait: nobody works "other"
    assert 0 < samples[("gotask_storage_roundtrip_seconds", ())] < 10
    assert samples[("process_resident_memory_bytes", ())] > 0


async def test_metrics_need_the_token(server: Server) -> None:
    async with httpx.AsyncClient(base_url=str(server.http_url)) as anon:
        assert (await anon.get("/metrics")).status_code == 401


async def test_openmetrics_is_served_when_asked(http: httpx.AsyncClient) -> None:
    r = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
