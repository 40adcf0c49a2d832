"""The Redis backend's queue block (issue 16): paused queues.

Rules of this module: those of `_redis_scripts` and `_redis_codec`, and of the contract's
queue block (`_base_queues`). A queue's oldest ready job is found per priority level of
its ready set (the first member of each level; at most 64 levels are looked at, so with
more distinct priorities in one queue the age is that of the 64 highest). The paused
queues are the set `P:paused`; the lease script
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

# The oldest ready job of a queue is the first member of one of its priority levels (a
# member starts with its due time): one ZRANGEBYSCORE per level, at most LEVELS_MAX.
QUEUE_INFO = r"""
local LEVELS_MAX = 64
local ready = {}
for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
  local key, best, levels = qk(q, 'ready'), nil, 0
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  while first[1] and levels < LEVELS_MAX do
    local due = struct.unpack('>d', first[1])
    if not best or due < best then best = due end
    levels = levels + 1
    first = redis.call('ZRANGEBYSCORE', key, '(' .. first[2], '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
  end
  if best then
    ready[#ready + 1] = q
    ready[#ready + 1] = fmt(best)
  end
end
return {snow, redis.call('SMEMBERS', P .. ':paused'), ready}
"""

#: Script name -> full Lua source (prelude included).
QUEUE_SCRIPTS: dict[str, str] = {
    name: PRELUDE + body for name, body in {
        "queue_pause": QUEUE_PAUSE, "queue_info": QUEUE_INFO,
    }.items()
}


def _names(raw: list[bytes]) -> tuple[str, ...]:
    return tuple(sorted(v.decode() for v in raw))


def _since(raw: list[bytes]) -> tuple[b.QueueReadySince, ...]:
    pairs = sorted((raw[i].decode(), float(raw[i + 1])) for i in range(0, len(raw), 2))
    return tuple(b.QueueReadySince(q, t) for q, t in pairs)


QUEUE_ENCODERS: dict[type, Callable[[Any], tuple[str, list[Any]]]] = {
    b.SetQueuePaused: lambda c: ("queue_pause", [c.queue, "1" if c.paused else "0"]),
    b.QueueInfo: lambda c: ("queue_info", []),
}

QUEUE_DECODERS: dict[str, Callable[[Any, Any], Any]] = {
    "queue_pause": lambda c, r: b.SetQueuePausedReply(_names(r)),
    "queue_info": lambda c, r: b.QueueInfoReply(float(r[0]), _names(r[1]), _since(r[2])),
}
