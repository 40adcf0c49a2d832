"""Repeated warnings, bounded: a shell logs the first of a kind at once, then at most
one per window, the window doubling up to a cap, each with a count of what it held back.

Rules of this module:
- Pure: the caller passes the time (monotonic seconds).
- A warning's kind is its text up to the first ":" or "(" (the operation and the peer,
  not the varying error), so "lease from storage@owner failed (...)" repeats as one kind.
- A kind quiet for longer than the cap starts over: its next warning is logged at once.
- At most KINDS_MAX kinds are remembered; beyond that the oldest is forgotten.
"""

from __future__ import annotations

import attrs

__all__ = ["KINDS_MAX", "LogThrottle"]

KINDS_MAX = 256


@attrs.define
class _Kind:
    next_at: float
    window_s: float
    last: float
    held: int = 0


@attrs.define
class LogThrottle:
    """Decides which repeats of a warning are logged."""

    base_s: float = 1.0
    cap_s: float = 60.0
    kinds: dict[str, _Kind] = attrs.Factory(dict)

    def admit(self, text: str, now: float) -> str | None:
        """The line to log for warning `text` at `now`, or None to hold it back."""
        key = text.split(":", 1)[0].split("(", 1)[0]
        kind = self.kinds.get(key)
        if kind is None or now - kind.last > self.cap_s:
            if kind is None and len(self.kinds) >= KINDS_MAX:
                del self.kinds[next(iter(self.kinds))]
            self.kinds[key] = _Kind(now + self.base_s, self.base_s, now)
            return text
        kind.last = now
        if now < kind.next_at:
            kind.held += 1
            return None
        held, kind.held = kind.held, 0
        kind.window_s = min(kind.window_s * 2, self.cap_s)
        kind.next_at = now + kind.window_s
        return f"{text} [{held} more like this held back]" if held else text
