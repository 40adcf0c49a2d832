"""The memory core's reads (jobs, counts, listings) and its node registry.

Rules of this module: those of `memory` (the memory backend); nothing here moves a job.
"""

from __future__ import annotations

from bisect import bisect_right
from heapq import heappop

from gotask._errors import StorageFull
from gotask._job import JobRecord

from . import base as b
from ._memory_state import _PLAIN, DEAD, QUEUED, _MemoryState, _Node

__all__ = ["_MemoryQueries"]


class _MemoryQueries(_MemoryState):
    """Get, count and list jobs; register, list and expire nodes."""

    # -- queries -----------------------------------------------------------------------

    def _get(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        return job.record() if job is not None else None

    def _counts(self) -> tuple[b.QueueCount, ...]:
        return tuple(
            b.QueueCount(name, _PLAIN[state], count)
            for name in sorted(self._queues)
            for state, count in sorted(self._queues[name].counts.items())
            if count
        )

    def _set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self._paused_queues.add(queue)
        else:
            self._paused_queues.discard(queue)

    def _paused(self) -> tuple[str, ...]:
        return tuple(sorted(self._paused_queues))

    def _ready_since(self) -> tuple[b.QueueReadySince, ...]:
        out = []
        for name in sorted(self._queues):
            queue = self._queues[name]
            if not queue.counts[QUEUED]:
                continue
            items, live = queue.by_due.items, self._by_due_live
            while items and not live(items[0]):
                heappop(items)
            if items:
                out.append(b.QueueReadySince(name, items[0][0]))
        return tuple(out)

    def _sorted_ids(self) -> list[str]:
        """All ids in order (possibly with purged or repeated ones), compacted lazily."""
        if self._gone > len(self._order) // 2:
            self._order = sorted(self._jobs)
            self._gone = 0
        elif not self._order_sorted:
            self._order.sort()
        self._order_sorted = True
        return self._order

    def _list(
        self, queue: str | None, state: str | None, limit: int, after_id: str | None,
        task: str | None = None,
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        return self._page(self._sorted_ids(), queue, state, limit, after_id, task)

    def _list_dead(
        self, queue: str | None, limit: int, after_id: str | None
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        return self._page(sorted(self._dead), queue, DEAD, limit, after_id)

    def _page(
        self, ids: list[str], queue: str | None, state: str | None, limit: int,
        after_id: str | None, task: str | None = None,
    ) -> tuple[tuple[JobRecord, ...], str | None]:
        """One page of `ids` (sorted) after `after_id`, filtered (a scan from `after_id`
        until the page is full); and the next cursor."""
        page: list[JobRecord] = []
        previous = None
        for i in range(bisect_right(ids, after_id) if after_id is not None else 0, len(ids)):
            job_id = ids[i]
            job = self._jobs.get(job_id) if job_id != previous else None
            previous = job_id
            if job is None or (queue is not None and job.rec.queue != queue):
                continue
            if (state is not None and job.state != state) or (
                    task is not None and job.rec.task != task):
                continue
            page.append(job.record())
            if len(page) == limit:
                return tuple(page), job_id
        return tuple(page), None

    # -- nodes ---------------------------------------------------------------------------

    def _register(self, cmd: b.RegisterNode, now: float) -> float:
        expires_at = now + cmd.ttl_s
        node = self._nodes.get(cmd.node)
        if node is None:
            if len(self._nodes) >= self.nodes_max:
                raise StorageFull(
                    f"{len(self._nodes)} nodes registered; nodes_max={self.nodes_max}"
                )
            self._nodes[cmd.node] = _Node(dict(cmd.info), now, now, expires_at)
        else:
            node.info, node.last_seen, node.expires_at = dict(cmd.info), now, expires_at
        return expires_at

    def _live_nodes(self, now: float) -> tuple[b.NodeInfo, ...]:
        return tuple(
            b.NodeInfo(name, dict(n.info), n.first_seen, n.last_seen, n.expires_at)
            for name, n in sorted(self._nodes.items())
            if n.expires_at > now
        )

    def _expire_nodes(self, now: float) -> tuple[str, ...]:
        removed = tuple(sorted(name for name, n in self._nodes.items() if n.expires_at <= now))
        for name in removed:
            del self._nodes[name]
            self._fair.forget(name)
        return removed
