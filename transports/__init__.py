"""GoTask transports: links between nodes over TCP (optionally TLS) or in memory.

Every transport is a shell around the same sans-IO codec (`_wire`), handshake
(`_handshake`) and link protocol (`_link_protocol`), run by the same trio link (`_link`):
identical frames, limits, timeouts and failure behaviour everywhere. The client's anyio
link (`gotask._client_conn`) is another shell around the same protocol. The names below
load on first use, so importing this package, the codec or the protocol imports neither
trio nor anyio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gotask._lazy import lazy_exports

if TYPE_CHECKING:
    from ._link import StreamLink as StreamLink
    from ._link_protocol import LinkOptions as LinkOptions
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

__getattr__ = lazy_exports(
    __name__,
    {
        "._link": ("StreamLink",),
        "._link_protocol": ("LinkOptions",),
        ".memory": ("MemoryNetwork",),
        ".tcp": ("connect_tcp", "maintain_link", "serve_tcp"),
    },
)
