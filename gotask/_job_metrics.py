"""Job-event metrics of one node: plain counts the node's actor shells add to, and the
HTTP face reads at each scrape (`gotask.web.metrics` turns them into Prometheus series).

Rules of this module:
- One `JobMetrics` per node, made by the node assembly and handed to the Broker, the
  WorkerSupervisor and the Reaper shells and to the HTTP face. Several nodes in one
  process never share one.
- Pure cores never touch it: they return metric events (`JobsEnqueued`,
  `LeasesExpired`) as effects, or their shells derive them from outcomes they carry out.
- The hot path (a job started, a job finished) is a few dict and list operations on
  plain ints and floats, in the node's trio thread: no lock, no prometheus-client call
  per job. Histograms are bucket counts over `RUN_BUCKETS_S` / `PICKUP_BUCKETS_S`.
- Labels are bounded: a task name outside the app's registry counts as `OTHER`; the
  first `QUEUES_MAX` queue names seen keep their name, later ones count as `OTHER`.
- This module imports no trio and no actor.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

import attrs

__all__ = [
    "OTHER",
    "OUTCOMES",
    "PICKUP_BUCKETS_S",
    "QUEUES_MAX",
    "RUN_BUCKETS_S",
    "Histogram",
    "JobMetrics",
    "JobsEnqueued",
    "LeasesExpired",
]

#: The label of a task outside the registry, or of a queue past `QUEUES_MAX`.
OTHER: Final = "other"
#: Distinct queue labels a node exports, `OTHER` aside.
QUEUES_MAX: Final = 200
#: How an attempt a worker ran ended (the `outcome` label).
OUTCOMES: Final = ("succeeded", "retried", "dead", "cancelled")
#: Upper bounds of the run-time histogram's buckets, in seconds (+Inf implied).
RUN_BUCKETS_S: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0, 300.0)
#: Upper bounds of the pickup-latency histogram's buckets, in seconds (+Inf implied).
PICKUP_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                           2.5, 5.0, 10.0, 30.0, 60.0)


@attrs.frozen
class JobsEnqueued:
    """Metric event: jobs stored by an enqueue, as `(queue, task, count)` triples
    (a repeated idempotency key stores nothing and is not counted)."""

    counts: tuple[tuple[str, str, int], ...]


@attrs.frozen
class LeasesExpired:
    """Metric event: the Reaper found expired leases; the jobs were queued again, moved
    to the dead-letter queue (out of attempts), or cancelled (as was asked)."""

    requeued: int = 0
    dead: int = 0
    cancelled: int = 0


@attrs.define(eq=False)
class Histogram:
    """Bucket counts (not cumulative; the last is +Inf), their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        """A histogram over `bounds` with nothing observed."""
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """`(le, count)` pairs as Prometheus exposes them, +Inf last."""
        out, seen = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            seen += n
            out.append((bound, seen))
        return out


@attrs.define(eq=False)
class _Pair:
    """What is kept for one (queue, task) label pair."""

    queue: str
    task: str
    run_s: Histogram = attrs.Factory(lambda: Histogram.empty(RUN_BUCKETS_S))
    outcomes: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(OUTCOMES, 0))


@attrs.define(eq=False)
class JobMetrics:
    """The job-event counts of one node (see the module's rules)."""

    tasks: frozenset[str]
    slots_total: int = 0
    slots_busy: int = 0
    enqueued: dict[tuple[str, str], int] = attrs.Factory(dict)
    pairs: dict[tuple[str, str], _Pair] = attrs.Factory(dict)
    pickup_s: dict[str, Histogram] = attrs.Factory(dict)
    redelivered: dict[str, int] = attrs.Factory(dict)
    leases_expired: dict[str, int] = attrs.Factory(
        lambda: dict.fromkeys(("requeued", "dead", "cancelled"), 0))
    _queues: dict[str, str] = attrs.Factory(dict)

    def queue_label(self, queue: str) -> str:
        """`queue`, or `OTHER` once `QUEUES_MAX` other names were seen."""
        label = self._queues.get(queue)
        if label is None:
            label = queue if len(self._queues) < QUEUES_MAX else OTHER
            if label != OTHER:
                self._queues[queue] = label
        return label

    def task_label(self, task: str) -> str:
        """`task` if the app registers it, else `OTHER`."""
        return task if task in self.tasks else OTHER

    # -- the shells' calls --------------------------------------------------------------

    def observe(self, event: JobsEnqueued | LeasesExpired) -> None:
        """Count a metric event a core returned."""
        if isinstance(event, JobsEnqueued):
            for queue, task, n in event.counts:
                key = (self.queue_label(queue), self.task_label(task))
                self.enqueued[key] = self.enqueued.get(key, 0) + n
            return
        expired = self.leases_expired
        expired["requeued"] += event.requeued
        expired["dead"] += event.dead
        expired["cancelled"] += event.cancelled

    def started(self, queue: str, attempt: int, pickup_s: float) -> None:
        """A worker started an attempt (`pickup_s`: from the job's due time to now)."""
        self.slots_busy += 1
        label = self.queue_label(queue)
        hist = self.pickup_s.get(label)
        if hist is None:
            hist = self.pickup_s[label] = Histogram.empty(PICKUP_BUCKETS_S)
        hist.observe(pickup_s if pickup_s > 0.0 else 0.0)
        if attempt > 1:
            self.redelivered[label] = self.redelivered.get(label, 0) + 1

    def finished(self, queue: str, task: str, outcome: str | None, run_s: float) -> None:
        """A started attempt ended after `run_s` seconds: `outcome` is one of `OUTCOMES`
        (None: not settled by this worker, e.g. its lease was lost or given back: counted
        nowhere)."""
        self.slots_busy -= 1
        if outcome is None:
            return
        pair = self.pairs.get((queue, task))
        if pair is None:
            pair = self._pair(queue, task)
        pair.outcomes[outcome] += 1
        pair.run_s.observe(run_s)

    def _pair(self, queue: str, task: str) -> _Pair:
        labels = (self.queue_label(queue), self.task_label(task))
        pair = self.pairs.get(labels)
        if pair is None:
            pair = self.pairs[labels] = _Pair(*labels)
        if len(self.pairs) < 4 * QUEUES_MAX * (len(self.tasks) + 1):
            self.pairs.setdefault((queue, task), pair)  # the raw names find it at once
        return pair

    # -- the HTTP face's reads ---------------------------------------------------------

    def labelled(self) -> Iterable[_Pair]:
        """Each label pair once (raw names that share labels share one `_Pair`)."""
        seen: dict[int, _Pair] = {}
        for pair in self.pairs.values():
            seen.setdefault(id(pair), pair)
        return sorted(seen.values(), key=lambda p: (p.queue, p.task))
