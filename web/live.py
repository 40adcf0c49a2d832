"""Live updates of the console: one sampler per node, pushed to every open page.

Rules of this module:
- The node, not the page, samples: while at least one console is connected, one task
  asks the Broker for the queue counts and the live nodes every `SAMPLE_S` seconds and
  for the records of every job any page watches (one `GetJobs` for all of them). The
  cost does not grow with the number of open consoles, and a page never polls.
- Pushes are coalesced: a page holds only the newest snapshot; a slow page skips
  snapshots instead of queueing them, so a queue draining fast cannot flood a browser.
- The history of the overview's charts is this node's own samples of the stored counts
  (one point every `HISTORY_S` seconds, the last hour), kept in memory.
- Limits: at most `PAGES_MAX` connected pages and `WATCHED_MAX` watched jobs per node.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

import attrs
import trio

from gotask._protocol import CountQueues, GetJobs, ListNodes
from gotask.runtime.world import World
from gotask.web._json import job_json, nodes_json, queues_json
from gotask.web.api import Call

__all__ = ["HISTORY_S", "PAGES_MAX", "SAMPLE_S", "Live", "Page"]

log = logging.getLogger("gotask.http")

#: Seconds between two samples while a console is open (at most this many pushes/s: 1/x).
SAMPLE_S: Final = 0.5
#: Seconds between two points of the overview's charts; the charts keep one hour.
HISTORY_S: Final = 10.0
HISTORY_MAX: Final = 360
PAGES_MAX: Final = 200
WATCHED_MAX: Final = 1000
#: The states the charts follow, in their order.
CHART_STATES: Final = ("queued", "scheduled", "active", "succeeded", "dead", "cancelled")


@attrs.define(eq=False)
class Page:
    """One connected page: the newest snapshot it has not sent yet."""

    job_id: str | None
    pending: dict[str, Any] | None = None
    wake: trio.Event = attrs.field(factory=trio.Event)

    def offer(self, snapshot: dict[str, Any]) -> None:
        """Replace what is waiting to go out (coalescing) and wake the sender."""
        self.pending = snapshot
        self.wake.set()

    async def next(self) -> dict[str, Any]:
        """The newest snapshot, waiting for one."""
        while self.pending is None:
            await self.wake.wait()
            self.wake = trio.Event()
        snapshot, self.pending = self.pending, None
        return snapshot


@attrs.define(eq=False)
class Live:
    """The node's sampler and the pages it pushes to."""

    call: Call
    world: World
    pages: set[Page] = attrs.field(factory=set)
    history: deque[list[float]] = attrs.field(factory=lambda: deque(maxlen=HISTORY_MAX))
    _someone: trio.Event = attrs.field(factory=trio.Event)
    _last_point_s: float = float("-inf")

    def open_page(self, job_id: str | None) -> Page:
        """Register a page (it gets the next snapshot at once).

        Raises:
            OverflowError: `PAGES_MAX` pages are open already.
        """
        if len(self.pages) >= PAGES_MAX:
            raise OverflowError(f"more than {PAGES_MAX} open consoles")
        page = Page(job_id)
        self.pages.add(page)
        self._someone.set()
        return page

    def close_page(self, page: Page) -> None:
        self.pages.discard(page)
        if not self.pages:
            self._someone = trio.Event()

    async def run(self) -> None:
        """Sample and push forever (started once per app)."""
        while True:
            try:
                await self.sample()
            except Exception as exc:  # storage away: keep the pages, try again
                log.warning("console sample failed: %s", (str(exc) or type(exc).__name__)
                            .splitlines()[0])
            with trio.move_on_after(HISTORY_S):
                await self._someone.wait()
            await trio.sleep(SAMPLE_S)

    async def sample(self) -> None:
        """One sample: counts (and a chart point when due), nodes, watched jobs."""
        reply = await self.call(CountQueues())
        counts, queues = reply.counts, queues_json(reply)
        now = self.world.wall()
        if now - self._last_point_s >= HISTORY_S:
            self._last_point_s = now
            totals = {s: 0 for s in CHART_STATES}
            for c in counts:
                if c.state in totals:
                    totals[c.state] += c.count
            self.history.append([round(now, 3), *(totals[s] for s in CHART_STATES)])
        if not self.pages:
            return
        nodes = nodes_json((await self.call(ListNodes())).nodes)
        jobs = await self._watched_jobs()
        base = {"queues": queues, "nodes": nodes, "point": self.history[-1], "now": now}
        for page in self.pages:
            job = jobs.get(page.job_id) if page.job_id else None
            page.offer(base | {"job": job} if page.job_id else base)

    async def _watched_jobs(self) -> dict[str, dict[str, Any]]:
        ids = sorted({p.job_id for p in self.pages if p.job_id})[:WATCHED_MAX]
        if not ids:
            return {}
        records = (await self.call(GetJobs(tuple(ids)))).jobs
        return {i: job_json(r) for i, r in zip(ids, records, strict=True) if r is not None}
