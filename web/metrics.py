"""Prometheus `/metrics` of one node: queue gauges read from storage at scrape, and the
process metrics of prometheus-client.

Rules of this module:
- A scrape sends one `CountQueues` through the Broker (the request every face may send)
  and times it; nothing reaches into an actor's state.
- Labels are bounded: `queue` and `state` come from storage's counts (stored states
  only), never from a request.
- The answer is encoded with `choose_encoder` for the scraper's `Accept` header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from quart import Response, request

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

    def __init__(self, call: Any) -> None:
        self._call = call
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._latest = _Latest()
        self.registry.register(self._latest)  # type: ignore[arg-type]

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
