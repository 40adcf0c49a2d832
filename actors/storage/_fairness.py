"""Fair leasing across queues, for the cores that pick jobs themselves (memory, SQLite).

Rules of this module: a lease from several queues takes one job at a time by smooth
weighted round robin (`swrr`), with credits kept per leasing node (`FairCredits`) so a
node's next lease goes on where its last stopped. Credits are clamped to
[-bound, bound], and at most `nodes_max` nodes' credits are kept (the oldest go first).
"""

from __future__ import annotations

from .base import QueueWeight

__all__ = ["FairCredits", "swrr"]


def swrr(live: list[QueueWeight], credit: dict[str, int], bound: int) -> QueueWeight:
    """Smooth weighted round robin: pick a queue and charge it the round's total weight.

    Credits are clamped to [-bound, bound] so they stay small however the set of
    queues with ready jobs changes between picks.
    """
    best, best_credit, total = live[0], None, 0
    for queue in live:
        value = min(credit.get(queue.name, 0) + queue.weight, bound)
        credit[queue.name] = value
        total += queue.weight
        if best_credit is None or value > best_credit:
            best, best_credit = queue, value
    assert best_credit is not None
    credit[best.name] = max(best_credit - total, -bound)
    return best


class FairCredits:
    """Each leasing node's round-robin credits per queue, for at most `nodes_max` nodes."""

    def __init__(self, nodes_max: int) -> None:
        self.nodes_max = nodes_max
        self._fair: dict[str, dict[str, int]] = {}

    def of(self, node: str) -> dict[str, int]:
        """The credits of `node` (new and empty if none are kept)."""
        credit = self._fair.get(node)
        if credit is None:
            if len(self._fair) >= self.nodes_max:
                del self._fair[next(iter(self._fair))]
            credit = self._fair[node] = {}
        return credit

    def forget(self, node: str) -> None:
        """Drop the credits of a node that is gone."""
        self._fair.pop(node, None)
