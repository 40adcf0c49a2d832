"""The Redis backend's queue block (issue 16): paused queues.

Rules of this module: those of `_redis_scripts` and `_redis_codec`, and of the contract's
queue block (`_base_queues`). The paused queues are the set `P:paused`; the lease script
skips its members. Resuming a queue publishes it as ready, so parked leases of every
node lease again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import base as b
from ._redis_scripts import PRELUDE

__all__ = ["QUEUE_DECODERS", "QUEUE_ENCODERS", "QUEUE_SCRIPTS"]

QUEUE_PAUSE = r"""
local q, paused = ARGV[3], ARGV[4] == '1'
if paused then
  redis.call('SADD', P .. ':paused', q)
elseif redis.call('SREM', P .. ':paused', q) == 1 then
  EV_READY[q] = true
  publish()
end
return redis.call('SMEMBERS', P .. ':paused')
"""

QUEUE_INFO = r"""
return {snow, redis.call('SMEMBERS', P .. ':paused')}
"""

#: Script name -> full Lua source (prelude included).
QUEUE_SCRIPTS: dict[str, str] = {
    name: PRELUDE + body for name, body in {
        "queue_pause": QUEUE_PAUSE, "queue_info": QUEUE_INFO,
    }.items()
}


def _names(raw: list[bytes]) -> tuple[str, ...]:
    return tuple(sorted(v.decode() for v in raw))


QUEUE_ENCODERS: dict[type, Callable[[Any], tuple[str, list[Any]]]] = {
    b.SetQueuePaused: lambda c: ("queue_pause", [c.queue, "1" if c.paused else "0"]),
    b.QueueInfo: lambda c: ("queue_info", []),
}

QUEUE_DECODERS: dict[str, Callable[[Any, Any], Any]] = {
    "queue_pause": lambda c, r: b.SetQueuePausedReply(_names(r)),
    "queue_info": lambda c, r: b.QueueInfoReply(float(r[0]), _names(r[1])),
}
