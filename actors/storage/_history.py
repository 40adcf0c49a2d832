"""Attempt history as the SQL and Redis backends store it: a JSON array of entries.

Rules of this module: an entry is `[attempt, node, leased_at, ended_at, outcome, error]`
(`node`, `leased_at` and `error` may be null), oldest first, at most `HISTORY_MAX`; the
backend appends it in the same statement or script that ends the attempt and counts what
it drops in `history_dropped`. Python only reads it back.
"""

from __future__ import annotations

import json

from gotask._job import AttemptRecord

__all__ = ["history_from_json"]


def history_from_json(text: str | bytes | None) -> tuple[AttemptRecord, ...]:
    """The attempt records of a stored JSON history (None or empty: none)."""
    if not text:
        return ()
    return tuple(
        AttemptRecord(int(attempt), node, None if leased_at is None else float(leased_at),
                      float(ended_at), outcome, error)
        for attempt, node, leased_at, ended_at, outcome, error in json.loads(text))
