"""Prometheus `/metrics` of one node: queue gauges read from storage at scrape, the
node's job-event counts (`gotask._job_metrics.JobMetrics`), and the process metrics of
prometheus-client.

Rules of this module:
- A scrape sends one `CountQueues` through the Broker (the request every face may send)
  and times it; nothing reaches into an actor's state. The job-event counts are read
  from the node's `JobMetrics` (plain numbers the actor shells add to) and turned into
  prometheus-client metric families here, at scrape time only.
- Labels are bounded: `queue` and `state` come from storage's counts (stored states
  only), never from a request.
- The answer is encoded with `choose_encoder` for the scraper's `Accept` header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from quart import Response, request

from gotask._job_metrics import JobMetrics
from gotask._protocol import CountQueues, QueueCount, QueuesReply

__all__ = ["KEY_STATES", "Metrics"]

#: States every known queue reports, zero when it has no such job.
KEY_STATES = ("queued", "scheduled", "active", "dead")


class _Latest:
    """A collector yielding the families of the scrape in progress."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class Metrics:
    """The `/metrics` endpoint of one node's HTTP face."""

    def __init__(self, call: Any, jobs: JobMetrics | None = None) -> None:
        self._call = call
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._latest = _Latest()
        self.registry.register(self._latest)  # type: ignore[arg-type]
        if jobs is not None:
            self.registry.register(_JobCollector(jobs))  # type: ignore[arg-type]

    async def scrape(self) -> Response:
        """Read the queue counts and answer in the scraper's exposition format."""
        started = trio.current_time()
        reply = await self._call(CountQueues())
        families = [*_queue_families(reply.counts), _oldest_ready_family(reply)]
        rtt = GaugeMetricFamily(
            "gotask_storage_roundtrip_seconds",
            "Time the scrape's count query took through the Broker to storage and back")
        rtt.add_metric([], trio.current_time() - started)
        self._latest.families = [*families, rtt]
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(self.registry), content_type=content_type)


def _queue_families(counts: tuple[QueueCount, ...]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("gotask_queue_jobs",
                             "Jobs stored per queue and state (cluster-wide, from storage)",
                             labels=["queue", "state"])
    table: dict[tuple[str, str], int] = {}
    for c in counts:
        table[(c.queue, c.state)] = c.count
    for queue in sorted({q for q, _ in table}):
        for state in KEY_STATES:
            table.setdefault((queue, state), 0)
    for (queue, state), n in sorted(table.items()):
        jobs.add_metric([queue, state], n)
    yield jobs


class _JobCollector:
    """The job-event series of one node, built from its `JobMetrics` at each scrape."""

    def __init__(self, jobs: JobMetrics) -> None:
        self.jobs = jobs

    def collect(self) -> Iterable[Metric]:
        jobs = self.jobs
        jobs.fold()
        enqueued = CounterMetricFamily(
            "gotask_jobs_enqueued", "Jobs stored by enqueues through this node's Broker",
            labels=["queue", "task"])
        for (queue, task), n in sorted(jobs.enqueued.items()):
            enqueued.add_metric([queue, task], n)
        completed = CounterMetricFamily(
            "gotask_jobs_completed", "Attempts this node's workers ran, by how they ended",
            labels=["queue", "task", "outcome"])
        run = HistogramMetricFamily(
            "gotask_job_run_seconds", "Run time of the attempts this node's workers ran",
            labels=["queue", "task"])
        for pair in jobs.labelled():
            for outcome, n in pair.outcomes.items():
                completed.add_metric([pair.queue, pair.task, outcome], n)
            run.add_metric([pair.queue, pair.task], pair.run_s.cumulative(), pair.run_s.total)
        pickup = HistogramMetricFamily(
            "gotask_job_pickup_seconds", "From a job's due time to the start of its attempt",
            labels=["queue"])
        for queue, hist in sorted(jobs.pickup_s.items()):
            pickup.add_metric([queue], hist.cumulative(), hist.total)
        yield from (enqueued, completed, run, pickup, *_job_counters(jobs))


def _job_counters(jobs: JobMetrics) -> Iterator[Metric]:
    redelivered = CounterMetricFamily(
        "gotask_jobs_redelivered", "Attempts started of jobs leased before (a retry, an "
        "expired lease or a lease given back)", labels=["queue"])
    for queue, n in sorted(jobs.redelivered.items()):
        redelivered.add_metric([queue], n)
    expired = CounterMetricFamily(
        "gotask_leases_expired", "Expired leases this node's Reaper found, by what became "
        "of the job", labels=["then"])
    for then, n in jobs.leases_expired.items():
        expired.add_metric([then], n)
    busy = GaugeMetricFamily("gotask_worker_slots_busy", "Worker slots running a job now")
    busy.add_metric([], jobs.slots_busy())
    total = GaugeMetricFamily("gotask_worker_slots", "Worker slots of this node")
    total.add_metric([], jobs.slots_total)
    yield from (redelivered, expired, busy, total)


def _oldest_ready_family(reply: QueuesReply) -> Metric:
    """Per known queue, how long its oldest ready job has waited (0: none is queued)."""
    age = GaugeMetricFamily("gotask_queue_oldest_ready_age_seconds",
                            "Seconds the oldest ready (queued) job of the queue has been due "
                            "and waiting, on the storage clock; 0 when none is queued",
                            labels=["queue"])
    ages = {a.queue: a.age_s for a in reply.oldest_ready}
    for queue in sorted({c.queue for c in reply.counts} | set(ages)):
        age.add_metric([queue], ages.get(queue, 0.0))
    return age
