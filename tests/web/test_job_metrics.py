"""Job-event metrics over real sockets: a known workload on two nodes (one joined over
TCP, stopped while it holds a lease), scraped over HTTP and parsed with prometheus-client's
own text parser; every counter equals what the workload did."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from gotask._job import NewJob
from gotask._job_metrics import FOLD_EVERY, OTHER, QUEUES_MAX, JobMetrics, JobsEnqueued
from gotask._server import open_server

from .conftest import node_config

N_OK, M_DEAD, K_RETRIED = 20, 3, 4
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _scrape(http: httpx.AsyncClient) -> Samples:
    r = await http.get("/metrics")
    assert r.status_code == 200
    return _samples(r.text)


async def _enqueue(http: httpx.AsyncClient, jobs: Sequence[dict[str, object]]) -> list[str]:
    r = await http.post("/api/v1/jobs/batch", json={"jobs": list(jobs)})
    assert r.status_code == 201, r.text
    ids: list[str] = r.json()["ids"]
    return ids


async def _wait_state(http: httpx.AsyncClient, job_id: str, state: str) -> None:
    with trio.fail_after(30):
        while (await http.get(f"/api/v1/jobs/{job_id}")).json()["state"] != state:
            await trio.sleep(0.05)


async def test_counters_equal_a_known_workload_with_a_lease_expiry() -> None:
    owner_config = node_config(name="owner", listen=("127.0.0.1", 0), lease_timeout_s=1.0,
                               heartbeat_s=0.3)
    async with open_server(owner_config) as owner, \
            httpx.AsyncClient(base_url=str(owner.http_url), timeout=30) as http:
        # A joined node works the "slow" queue; it stops while running `hang`, so the
        # lease it held expires at the owner's storage and the owner's Reaper finds it.
        joined = attrs.evolve(owner_config, name="joined", listen=None, http=None,
                              join=("127.0.0.1", owner.port), queues=(("slow", 1),))
        async with open_server(joined):
            (hung,) = await _enqueue(http, [{"task": "hang"}])
            await _wait_state(http, hung, "active")
            # Its start reaches storage with the next batched start report (once a
            # second); only then does the expiry count as an attempt (docs/guarantees.md).
            await trio.sleep(2.5)
        await _wait_state(http, hung, "dead")
        ok = [{"task": "add", "args": [i, 1]} for i in range(N_OK)]
        ids = await _enqueue(http, ok + [{"task": "always_fails"}] * M_DEAD
                             + [{"task": "flaky"}] * K_RETRIED)
        for job_id in ids:
            assert (await http.get(f"/api/v1/jobs/{job_id}/wait")).json()["state"] in (
                "succeeded", "dead")
        s = await _scrape(http)

    def get(name: str, **labels: str) -> float:
        return s[(name, tuple(sorted(labels.items())))]

    def done(task: str, outcome: str) -> float:
        return get("gotask_jobs_completed_total", queue="default", task=task, outcome=outcome)

    assert get("gotask_jobs_enqueued_total", queue="default", task="add") == N_OK
    assert get("gotask_jobs_enqueued_total", queue="default", task="always_fails") == M_DEAD
    assert get("gotask_jobs_enqueued_total", queue="default", task="flaky") == K_RETRIED
    assert get("gotask_jobs_enqueued_total", queue="slow", task="hang") == 1
    assert done("add", "succeeded") == N_OK and done("add", "dead") == 0
    assert done("always_fails", "dead") == M_DEAD
    assert done("flaky", "retried") == done("flaky", "succeeded") == K_RETRIED
    assert get("gotask_job_run_seconds_count", queue="default", task="add") == N_OK
    assert get("gotask_job_run_seconds_count", queue="default", task="flaky") == 2 * K_RETRIED
    assert get("gotask_job_run_seconds_bucket", queue="default", task="add", le="+Inf") == N_OK
    assert get("gotask_job_pickup_seconds_count", queue="default") == (
        N_OK + M_DEAD + 2 * K_RETRIED)
    assert get("gotask_jobs_redelivered_total", queue="default") == K_RETRIED
    # The owner never ran the hung job: its only trace here is the expiry.
    assert ("gotask_job_pickup_seconds_count", (("queue", "slow"),)) not in s
    assert get("gotask_leases_expired_total", then="dead") == 1
    assert get("gotask_leases_expired_total", then="requeued") == 0
    assert get("gotask_worker_slots") == owner_config.concurrency
    assert get("gotask_worker_slots_busy") == 0


async def test_queue_labels_are_capped_with_an_other_overflow() -> None:
    extra = 5
    async with open_server(node_config()) as srv, \
            httpx.AsyncClient(base_url=str(srv.http_url), timeout=30) as http:
        await _enqueue(http, [{"task": "add", "args": [1, 1], "queue": f"q{i:03}"}
                              for i in range(QUEUES_MAX + extra)])
        s = await _scrape(http)
    enqueued = {dict(labels)["queue"]: v for (name, labels), v in s.items()
                if name == "gotask_jobs_enqueued_total"}
    assert len(enqueued) == QUEUES_MAX + 1
    assert enqueued[OTHER] == extra
    assert sum(enqueued.values()) == QUEUES_MAX + extra


def test_task_labels_come_from_the_registry_only() -> None:
    metrics = JobMetrics(frozenset({"add"}))
    jobs = tuple(NewJob(f"id{i}", task, "q", b"", 0, 0.0, 1, None, 60.0, None)
                 for i, task in enumerate(("add", "add", "made-up", "add")))
    metrics.observe(JobsEnqueued(jobs, (True, True, True, False)))  # the last was a repeat
    metrics.fold()
    assert metrics.enqueued == {("q", "add"): 2, ("q", OTHER): 1}
    for task in ("add", "made-up", "other-made-up"):
        metrics.ran("default", task, "succeeded", 0.002, 0.001, 1)
    metrics.fold()
    pairs = {(p.queue, p.task): p.outcomes["succeeded"] for p in metrics.labelled()}
    assert pairs == {("default", "add"): 1, ("default", OTHER): 2}


def test_folded_attempts_land_in_the_right_buckets_and_counts() -> None:
    metrics = JobMetrics(frozenset({"add", "mul"}))
    runs = [0.0005, 0.003, 0.003, 0.2, 400.0]
    for i, run_s in enumerate(runs):
        metrics.ran("q", "add", "succeeded" if i % 2 else "retried", run_s, -1.0, 1 + i % 2)
    metrics.ran("q", "mul", "dead", 0.05, 0.02, 3)
    assert metrics.pairs == {}  # nothing is counted until a fold
    metrics.fold()
    add, mul = metrics.labelled()
    assert add.outcomes == {"succeeded": 2, "retried": 3, "dead": 0, "cancelled": 0}
    assert dict(add.run_s.cumulative())["0.001"] == 1
    assert dict(add.run_s.cumulative())["0.005"] == 3
    assert dict(add.run_s.cumulative())["300.0"] == 4
    assert dict(add.run_s.cumulative())["+Inf"] == 5 and add.run_s.total == sum(runs)
    assert mul.outcomes["dead"] == 1
    pickup = dict(metrics.pickup_s["q"].cumulative())
    assert pickup["0.001"] == 5  # a due time ahead of the node's clock counts as 0
    assert pickup["0.025"] == pickup["+Inf"] == 6
    assert metrics.redelivered == {"q": 2 + 1}  # attempts 2 (twice) and 3


def test_attempts_fold_by_themselves_every_fold_every() -> None:
    metrics = JobMetrics(frozenset({"add"}))
    for _ in range(FOLD_EVERY):
        metrics.ran("q", "add", "succeeded", 0.001, 0.001, 1)
    assert metrics.attempts == []
    (pair,) = metrics.labelled()
    assert pair.outcomes["succeeded"] == FOLD_EVERY
