"""Who watches which job: one pure book for the Broker and every storage shell.

Rules of this module:
- A `WatchBook` maps job ids to the set of watchers (addresses, or any hashable) that
  want that job's changes. It does no IO and knows no clock: shells ask it who to tell.
- Registrations are bounded: at most `ids_max` watched ids, and at most
  `per_watcher_max` ids for one watcher, so one client cannot take the whole book.
  Past either bound `watch` raises `ValueError` and registers nothing.
- A watch ends by itself when its job is settled (`settle`), when its watcher unwatches,
  or when the watcher is dropped (it went away, or could not keep up). Every path that
  removes watchers reports the ids nobody watches any longer, so a shell can stop
  watching them upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

import attrs

__all__ = ["IDS_MAX", "PER_WATCHER_MAX", "WatchBook"]

W = TypeVar("W", bound=Hashable)

IDS_MAX = 100_000
PER_WATCHER_MAX = 10_000


@attrs.define
class WatchBook(Generic[W]):
    """Watchers of jobs, bounded overall and per watcher.

    Args:
        ids_max: most job ids watched at once.
        per_watcher_max: most job ids one watcher may watch at once.
    """

    ids_max: int = IDS_MAX
    per_watcher_max: int = PER_WATCHER_MAX
    _by_id: dict[str, set[W]] = attrs.field(factory=dict, init=False)
    _by_watcher: dict[W, set[str]] = attrs.field(factory=dict, init=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_id

    def __len__(self) -> int:
        """Number of watched job ids."""
        return len(self._by_id)

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def watch(self, ids: Iterable[str], watcher: W) -> None:
        """Register `watcher` for every id in `ids` (all or none).

        Raises:
            ValueError: the book, or this watcher's share of it, would pass its bound.
        """
        ids = set(ids)
        mine = self._by_watcher.get(watcher, set())
        new_for_watcher = len(ids - mine)
        if len(mine) + new_for_watcher > self.per_watcher_max:
            raise ValueError(f"too many watched jobs for one watcher "
                             f"(limit {self.per_watcher_max})")
        new_ids = sum(1 for job_id in ids if job_id not in self._by_id)
        if len(self._by_id) + new_ids > self.ids_max:
            raise ValueError(f"too many watched jobs (limit {self.ids_max})")
        for job_id in ids:
            self._by_id.setdefault(job_id, set()).add(watcher)
        if ids:
            self._by_watcher.setdefault(watcher, set()).update(ids)

    def watchers(self, job_id: str) -> frozenset[W]:
        """The watchers of `job_id` (empty when nobody watches it)."""
        return frozenset(self._by_id.get(job_id, ()))

    def ids(self) -> frozenset[str]:
        """Every watched job id."""
        return frozenset(self._by_id)

    def ids_of(self, watcher: W) -> frozenset[str]:
        """The ids `watcher` watches."""
        return frozenset(self._by_watcher.get(watcher, ()))

    def unwatch(self, ids: Iterable[str], watcher: W) -> list[str]:
        """End `watcher`'s watch of `ids`; returns the ids nobody watches any longer."""
        gone: list[str] = []
        mine = self._by_watcher.get(watcher)
        for job_id in ids:
            subs = self._by_id.get(job_id)
            if subs is None or watcher not in subs:
                continue
            subs.discard(watcher)
            if mine is not None:
                mine.discard(job_id)
            if not subs:
                del self._by_id[job_id]
                gone.append(job_id)
        if mine is not None and not mine:
            del self._by_watcher[watcher]
        return gone

    def drop(self, watcher: W) -> list[str]:
        """Forget `watcher` entirely; returns the ids nobody watches any longer."""
        return self.unwatch(list(self._by_watcher.get(watcher, ())), watcher)

    def drop_where(self, predicate: Callable[[W], bool]) -> list[str]:
        """Forget every watcher for which `predicate` holds (a client whose connection
        went away); returns the ids nobody watches any longer, sorted."""
        gone: list[str] = []
        for watcher in [w for w in self._by_watcher if predicate(w)]:
            gone.extend(self.drop(watcher))
        return sorted(gone)  # a replayable order

    def settle(self, job_id: str) -> frozenset[W]:
        """The job reached a terminal state: end every watch of it, return its watchers."""
        subs = self._by_id.pop(job_id, set())
        for watcher in subs:
            mine = self._by_watcher.get(watcher)
            if mine is not None:
                mine.discard(job_id)
                if not mine:
                    del self._by_watcher[watcher]
        return frozenset(subs)
