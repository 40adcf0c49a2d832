"""The admin requests of the clients: queues, listings, the DLQ, nodes, cron.

Rules of this module: those of `_client_async`, whose `AsyncClient` is built on
`AdminRequests`; each method is one request of the client protocol, sent by `_request`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar

import attrs

from gotask._client_jobs import dlq_ids, gather_pages
from gotask._job import JobRecord
from gotask._protocol import (
    CountQueues,
    CronEntryInfo,
    ListCron,
    ListDead,
    ListJobs,
    ListNodes,
    NodeInfo,
    PauseCron,
    PauseQueue,
    PauseWorkers,
    PurgeDead,
    RetryDead,
    RunCron,
)
from gotask.runtime.message import Command

__all__ = ["AdminRequests", "QueueStatus"]

R = TypeVar("R")


@attrs.frozen
class QueueStatus:
    """A queue as `queue_list` reports it: its non-zero job counts per state, whether it
    is paused (cluster-wide), and how long its oldest ready job has waited (seconds on
    the storage's clock; None when no job is queued)."""

    name: str
    counts: dict[str, int]
    paused: bool
    oldest_ready_age_s: float | None = None


class AdminRequests:
    """The admin requests (`AsyncClient` provides `_request`)."""

    async def _request(self, msg: Command[R], *, retry: bool,
                       timeout_s: float | None = None) -> R:
        raise NotImplementedError

    # -- queues, the DLQ, nodes --------------------------------------------------------------

    async def queues(self) -> dict[str, dict[str, int]]:
        """Job counts per queue and state, e.g. {"default": {"queued": 3, "active": 1}}.

        Only non-zero counts appear; a queue without jobs does not appear at all.
        """
        return {q.name: q.counts for q in await self.queue_list() if q.counts}

    async def queue_list(self) -> list[QueueStatus]:
        """Every queue that holds jobs or is paused, sorted by name: its non-zero job
        counts per state, whether it is paused, and its oldest ready job's age."""
        reply = await self._request(CountQueues(), retry=True)
        counts: dict[str, dict[str, int]] = {name: {} for name in reply.paused}
        for count in reply.counts:
            counts.setdefault(count.queue, {})[count.state] = count.count
        paused = set(reply.paused)
        ages = {a.queue: a.age_s for a in reply.oldest_ready}
        return [QueueStatus(name, c, name in paused, ages.get(name))
                for name, c in sorted(counts.items())]

    async def pause_queue(self, queue: str) -> None:
        """Pause `queue` on every node, durably: enqueue goes on, running jobs finish,
        and none of its jobs starts until `resume_queue`. Pausing twice is harmless.

        Raises:
            ValueError: `queue` is not a valid queue name.
        """
        await self._request(PauseQueue(queue, True), retry=True)

    async def resume_queue(self, queue: str) -> None:
        """Resume a paused queue on every node: its jobs start again at once.

        Raises:
            ValueError: `queue` is not a valid queue name.
        """
        await self._request(PauseQueue(queue, False), retry=True)

    async def dlq_list(self, queue: str | None = None, limit: int = 100,
                       after_id: str | None = None) -> list[JobRecord]:
        """Dead jobs ordered by id, at most `limit` (1-10000), after `after_id` to page.

        Raises:
            ValueError: `limit` out of range.
        """
        return await gather_pages(functools.partial(self._request, retry=True),
                                  ListDead(queue=queue, limit=limit, cursor=after_id))

    async def list_jobs(self, queue: str | None = None, state: str | None = None,
                        limit: int = 100, after_id: str | None = None,
                        task: str | None = None) -> list[JobRecord]:
        """Jobs ordered by id (oldest first), filtered by queue, state and task, at most
        `limit` (1-10000), after `after_id` to page.

        Raises:
            ValueError: `limit` out of range, or a queue or task name that is not one.
        """
        msg = ListJobs(queue=queue, state=state, limit=limit, cursor=after_id, task=task)
        return await gather_pages(functools.partial(self._request, retry=True), msg)

    async def pause(self, paused: bool = True) -> None:
        """Stop (or with `paused=False` resume) leasing on the connected node; running
        jobs go on."""
        await self._request(PauseWorkers(paused), retry=True)

    async def dlq_retry(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Queue dead jobs again with fresh attempts: the ones in `ids`, or every dead
        job with `all_jobs=True`. Returns how many were requeued.

        Raises:
            ValueError: neither or both of `ids` and `all_jobs` given.
        """
        return (await self._request(RetryDead(dlq_ids(ids, all_jobs)), retry=False)).count

    async def dlq_purge(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Delete dead jobs: the ones in `ids`, or all with `all_jobs=True`. Returns how
        many were removed.

        Raises:
            ValueError: neither or both of `ids` and `all_jobs` given.
        """
        return (await self._request(PurgeDead(dlq_ids(ids, all_jobs)), retry=False)).count

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes of the cluster, sorted by name."""
        return list((await self._request(ListNodes(), retry=True)).nodes)

    # -- cron (issue 15) ---------------------------------------------------------------

    async def cron_list(self) -> list[CronEntryInfo]:
        """The cron entries in storage, sorted by name, as the answering node sees them."""
        return list((await self._request(ListCron(), retry=True)).entries)

    async def cron_pause(self, name: str, paused: bool = True) -> None:
        """Pause (or, with `paused=False`, resume) cron entry `name` cluster-wide.

        Raises:
            CronEntryNotFound: no entry of that name is stored.
        """
        await self._request(PauseCron(name, paused), retry=True)

    async def cron_run(self, name: str) -> str:
        """Enqueue one job of cron entry `name` now, outside its schedule; its id.

        Raises:
            CronEntryNotFound: the answering node's app declares no such entry.
        """
        return (await self._request(RunCron(name), retry=False)).job_id

