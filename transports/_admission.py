"""Pre-authentication admission: who may hold one of a listener's handshake slots.

Rules of this module:
- Pure: no IO, no clock (callers pass `now`), no trio. A slot carries a `cancel`
  callable; evicting a slot calls it, and the shell closes that connection.
- At most `limit` connections of one listener handshake at once, and at most
  `per_source_max` of them from one source (the peer's host). A source cannot lock
  others out: when a new connection finds its source or the listener full, the oldest
  idle slot (no byte received yet) of that source, or of the listener, is evicted to make
  room; busy handshakes are evicted only when none is idle and the listener is full, the
  oldest first. A connection is refused only when its own source holds `per_source_max`
  slots that are all busy.
- A slot is given back the moment its handshake ends, before any failure delay, so a
  peer that fails authentication holds no slot while it waits for its answer.
- Shedding (a refusal or an eviction) is counted; `shed_report` returns one line with the
  counts at most once per `report_every_s`, for the shell to log.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

__all__ = ["HandshakeGate", "Slot", "source_of"]


def source_of(peer_address: str) -> str:
    """The source of a "host:port" peer address: its host ("?" stays "?")."""
    host, sep, _port = peer_address.rpartition(":")
    return host if sep else peer_address


@attrs.define(eq=False)
class Slot:
    """One handshaking connection: its source, when it came, whether a byte arrived."""

    source: str
    opened_at: float
    cancel: Callable[[], None]
    idle: bool = True
    evicted: bool = False


@attrs.define
class HandshakeGate:
    """The handshake slots of one listener (see the module rules)."""

    limit: int
    per_source_max: int = 8
    report_every_s: float = 10.0
    slots: list[Slot] = attrs.Factory(list)
    refused: int = 0
    evicted: int = 0
    _reported_at: float | None = None

    @property
    def active(self) -> int:
        """Connections holding a slot."""
        return len(self.slots)

    def try_enter(self, source: str, now: float, cancel: Callable[[], None]) -> Slot | None:
        """A slot for a new connection from `source`, evicting to make room; None: refused."""
        mine = [s for s in self.slots if s.source == source]
        if len(mine) >= self.per_source_max and not self._evict([s for s in mine if s.idle]):
            self.refused += 1
            return None
        if len(self.slots) >= self.limit:
            self._evict([s for s in self.slots if s.idle] or self.slots)
        slot = Slot(source, now, cancel)
        self.slots.append(slot)
        return slot

    def first_byte(self, slot: Slot) -> None:
        """The connection of `slot` sent something: it is no longer idle."""
        slot.idle = False

    def leave(self, slot: Slot) -> None:
        """Give `slot` back (again is a no-op)."""
        if slot in self.slots:
            self.slots.remove(slot)

    def shed_report(self, now: float) -> str | None:
        """One line with the shedding counts, if any happened and none was reported lately."""
        if not (self.refused or self.evicted):
            return None
        if self._reported_at is not None and now - self._reported_at < self.report_every_s:
            return None
        self._reported_at = now
        sources = len({s.source for s in self.slots})
        line = (f"admission shedding: {self.refused} refused, {self.evicted} evicted since "
                f"the last report; {len(self.slots)}/{self.limit} handshaking from "
                f"{sources} source(s)")
        self.refused = self.evicted = 0
        return line

    def _evict(self, candidates: list[Slot]) -> bool:
        if not candidates:
            return False
        oldest = min(candidates, key=lambda s: s.opened_at)
        self.slots.remove(oldest)
        oldest.evicted = True
        self.evicted += 1
        oldest.cancel()
        return True
