"""Limits of the wire codec, the msgpack values it passes as they are, and `_Invalid`.

Rules of this module:
- It holds what every part of the codec (`_wire` and the modules it is split into)
  checks against: the limits, the scalar types that cross the wire unchanged, and the
  error a field codec raises when a value does not fit. No state, no IO, never trio.
- `_Invalid` is internal: `_wire` turns it into `InvalidMessage` (decoding) or
  `LocalProtocolError` (encoding) before it leaves the codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "ADDRESS_CACHE_MAX",
    "ADDRESS_INTERN_CHARS_MAX",
    "CONTAINER_LEN_MAX",
    "DEPTH_MAX",
    "FRAME_BYTES_MAX",
    "PREAUTH_FRAME_BYTES_MAX",
    "_ANY_SCALARS",
    "_EXACT_SCALARS",
    "_NONE",
    "_STR_ONLY",
    "_Code",
    "_Invalid",
    "_short",
    "_tname",
    "_too_deep",
]

#: Deepest nesting of arrays and maps in a body, message arrays included.
DEPTH_MAX: Final = 32
#: Most elements an array or map in a body may declare.
CONTAINER_LEN_MAX: Final = 1_000_000
FRAME_BYTES_MAX: Final = 1 << 20
PREAUTH_FRAME_BYTES_MAX: Final = 16 << 10
#: Most distinct addresses the decoder keeps interned; past that the cache starts over.
ADDRESS_CACHE_MAX: Final = 4096
#: Longest address (node and actor name together, in characters) the decoder interns, so
#: the cache holds a few MiB at most whatever a peer sends.
ADDRESS_INTERN_CHARS_MAX: Final = 512

_NONE = type(None)
_STR_ONLY = frozenset({str})
_ANY_SCALARS = frozenset({_NONE, bool, int, float, str, bytes})
_EXACT_SCALARS = frozenset({_NONE, bool, int, str, bytes})

#: A compiled field codec: (value, nesting level of the container holding it) -> value.
_Code = Callable[[Any, int], Any]


# -- validation errors ---------------------------------------------------------------


class _Invalid(Exception):
    """A value does not fit its field; each container adds its path segment on the way out."""

    def __init__(self, reason: str, segment: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments = [] if segment is None else [segment]  # innermost first

    def add(self, segment: str | None) -> None:
        if segment is not None:
            self.segments.append(segment)

    def where(self) -> str | None:
        path = ""
        for seg in reversed(self.segments):
            path += seg if not path or seg.startswith("[") else "." + seg
        return path or None

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.reason}" if where else self.reason


def _tname(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _short(value: object) -> str:
    if type(value) not in _ANY_SCALARS:
        return f"a {type(value).__name__}"  # never repr a container: it may be 1000 deep
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _too_deep(segment: str | None) -> _Invalid:
    return _Invalid(f"nested deeper than {DEPTH_MAX} levels", segment)
