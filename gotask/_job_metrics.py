"""Job-event metrics of one node: plain counts the node's actor shells add to, and the
HTTP face reads at each scrape (`gotask.web.metrics` turns them into Prometheus series).

Rules of this module:
- One `JobMetrics` per node, made by the node assembly and handed to the Broker, the
  WorkerSupervisor and the Reaper shells and to the HTTP face. Several nodes in one
  process never share one.
- Pure cores never touch it: they return metric events (`JobsEnqueued`,
  `LeasesExpired`) as effects, or their shells derive them from outcomes they carry out.
- The hot path (an attempt settled, a batch enqueued) appends one tuple, in the node's
  trio thread: no lock, no prometheus-client call per job. Every `FOLD_EVERY` records,
  and at each scrape, they are folded into counts and histograms (bucket counts over
  `RUN_BUCKETS_S` / `PICKUP_BUCKETS_S`) by loops that run in C.
- Labels are bounded: a task name outside the app's registry counts as `OTHER`; the
  first `QUEUES_MAX` queue names seen keep their name, later ones count as `OTHER`.
- This module imports no trio and no actor.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from gotask._job import NewJob

__all__ = [
    "FOLD_EVERY",
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
#: Attempts recorded before they are folded into the counts (a scrape folds them too).
FOLD_EVERY: Final = 4096
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
    """Metric event: an enqueue stored `jobs[i]` where `created[i]` (a repeated
    idempotency key stores nothing and is not counted). The jobs are the ones the
    Broker sent to storage, so the event costs nothing per job to make."""

    jobs: tuple[NewJob, ...]
    created: tuple[bool, ...]


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

    def add(self, values: list[float]) -> None:
        """Count every value of `values` (the bucketing loop runs in C)."""
        counts = self.counts
        for index, n in Counter(map(functools.partial(bisect.bisect_left, self.bounds),
                                    values)).items():
            counts[index] += n
        self.total += math.fsum(values)

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


# The fields of one attempt's record in `JobMetrics.attempts`.
_PAIR, _OUTCOME, _RUN, _PICKUP, _ATTEMPT = (operator.itemgetter(0, 1), operator.itemgetter(2),
                                           operator.itemgetter(3), operator.itemgetter(4),
                                           operator.itemgetter(5))


_QUEUE_TASK = operator.attrgetter("queue", "task")


def _no_slots() -> int:
    return 0


@attrs.define(eq=False)
class JobMetrics:
    """The job-event counts of one node (see the module's rules).

    An attempt that ended costs one tuple appended to `attempts`; they are folded into
    the counts and histograms in batches (`fold`), by C loops over each (queue, task)."""

    tasks: frozenset[str]
    slots_total: int = 0
    #: How many worker slots run a job now (the WorkerSupervisor's shell sets it).
    slots_busy: Callable[[], int] = _no_slots
    attempts: list[tuple[str, str, str, float, float, int]] = attrs.Factory(list)
    stored: list[JobsEnqueued] = attrs.Factory(list)
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
            stored = self.stored
            stored.append(event)
            if len(stored) >= FOLD_EVERY:
                self.fold()
            return
        expired = self.leases_expired
        expired["requeued"] += event.requeued
        expired["dead"] += event.dead
        expired["cancelled"] += event.cancelled

    def ran(self, queue: str, task: str, outcome: str, run_s: float, pickup_s: float,
            attempt: int) -> None:
        """A worker settled attempt `attempt` as `outcome` (one of `OUTCOMES`) after
        `run_s` seconds; it started `pickup_s` (>= 0) seconds after the job was due."""
        attempts = self.attempts
        attempts.append((queue, task, outcome, run_s, pickup_s, attempt))
        if len(attempts) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Add the enqueues and attempts recorded since the last fold to the counts."""
        stored, self.stored = self.stored, []
        for (queue, task), n in Counter(itertools.chain.from_iterable(
                itertools.compress(map(_QUEUE_TASK, e.jobs), e.created) for e in stored)).items():
            key = (self.queue_label(queue), self.task_label(task))
            self.enqueued[key] = self.enqueued.get(key, 0) + n
        attempts, self.attempts = self.attempts, []
        attempts.sort(key=_PAIR)
        for (queue, task), group in itertools.groupby(attempts, _PAIR):
            done = list(group)
            pair = self.pairs.get((queue, task)) or self._pair(queue, task)
            for outcome, n in Counter(map(_OUTCOME, done)).items():
                pair.outcomes[outcome] += n
            pair.run_s.add(list(map(_RUN, done)))
            pickup = self.pickup_s.get(pair.queue)
            if pickup is None:
                pickup = self.pickup_s[pair.queue] = Histogram.empty(PICKUP_BUCKETS_S)
            pickup.add(list(map(_PICKUP, done)))
            again = len(done) - operator.countOf(map(_ATTEMPT, done), 1)
            if again:
                self.redelivered[pair.queue] = self.redelivered.get(pair.queue, 0) + again

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
        """Each label pair once (raw names that share labels share one `_Pair`); fold
        first to include the latest attempts."""
        seen: dict[int, _Pair] = {}
        for pair in self.pairs.values():
            seen.setdefault(id(pair), pair)
        return sorted(seen.values(), key=lambda p: (p.queue, p.task))
