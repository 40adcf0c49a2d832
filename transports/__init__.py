"""GoTask transports: links between nodes over TCP (optionally TLS) or in memory.

Every transport is a shell around the same sans-IO codec (`_wire`) and handshake
(`_handshake`), run by the same trio link (`_link`): identical frames, limits, timeouts
and failure behaviour everywhere. Importing this package imports trio; the codec modules
themselves never do.
"""

from __future__ import annotations

from ._link import LinkOptions as LinkOptions
from ._link import StreamLink as StreamLink
from .memory import MemoryNetwork as MemoryNetwork
from .tcp import connect_tcp as connect_tcp
from .tcp import maintain_link as maintain_link
from .tcp import serve_tcp as serve_tcp

__all__ = [
    "LinkOptions",
    "MemoryNetwork",
    "StreamLink",
    "connect_tcp",
    "maintain_link",
    "serve_tcp",
]
