"""The Redis backend's cron block (issue 15): scripts, their arguments and answers.

Rules of this module: those of `_redis_scripts` and `_redis_codec`, and of the contract's
cron block (`_base_cron`). An entry is the hash `P:cron:NAME` (name, definition, node,
registered_at, last_tick, paused, last_job); `P:crons` is the set of names. The fire
script does the compare-and-set and the enqueue (the enqueue script's body, reading its
job fields from `JARGV`) in one script, so both or neither happen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import base as b
from ._redis_scripts import ENQUEUE, PRELUDE

__all__ = ["CRON_DECODERS", "CRON_ENCODERS", "CRON_SCRIPTS", "cron_job_args"]

_ENQUEUE_TAIL = "return {ids, created}\n"
assert ENQUEUE.endswith(_ENQUEUE_TAIL)

CRON_REGISTER = r"""
local node, states, changed, given = ARGV[3], {}, {}, {}
for i = 4, #ARGV, 2 do
  local name, def = ARGV[i], ARGV[i + 1]
  local ck = P .. ':cron:' .. name
  given[name] = true
  local old = redis.call('HGET', ck, 'definition')
  if not old then
    redis.call('HSET', ck, 'name', name, 'last_tick', string.format('%d', math.floor(now)),
      'paused', '0')
    redis.call('SADD', P .. ':crons', name)
  elseif old ~= def then
    changed[#changed + 1] = name
  end
  redis.call('HSET', ck, 'definition', def, 'node', node, 'registered_at', snow)
  states[#states + 1] = redis.call('HGETALL', ck)
end
local unknown = {}
for _, name in ipairs(redis.call('SMEMBERS', P .. ':crons')) do
  if not given[name] then unknown[#unknown + 1] = name end
end
return {states, changed, unknown}
"""

CRON_FIRE = r"""
local ck, expected, tick = P .. ':cron:' .. ARGV[3], ARGV[4], ARGV[5]
local current = redis.call('HGET', ck, 'last_tick')
if not current then return {'missing', false, {}, snow} end
if tonumber(tick) > now then return {'early', current, {}, snow} end
if current ~= expected then return {'stale', current, {}, snow} end
redis.call('HSET', ck, 'last_tick', tick)
if redis.call('HGET', ck, 'paused') == '1' then return {'paused', tick, {}, snow} end
local JARGV = {ARGV[1], ARGV[2]}
for i = 6, #ARGV do JARGV[#JARGV + 1] = ARGV[i] end
""" + ENQUEUE[: -len(_ENQUEUE_TAIL)].replace("ARGV", "JARGV") + r"""
if #ids > 0 then redis.call('HSET', ck, 'last_job', ids[#ids]) end
return {'fired', tick, ids, snow}
"""

CRON_LIST = r"""
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', P .. ':crons')) do
  out[#out + 1] = redis.call('HGETALL', P .. ':cron:' .. name)
end
return out
"""

CRON_PAUSE = r"""
local ck = P .. ':cron:' .. ARGV[3]
if redis.call('EXISTS', ck) == 0 then return 0 end
redis.call('HSET', ck, 'paused', ARGV[4])
return 1
"""

#: Script name -> full Lua source (prelude included).
CRON_SCRIPTS: dict[str, str] = {
    name: PRELUDE + body for name, body in {
        "cron_register": CRON_REGISTER, "cron_fire": CRON_FIRE, "cron_list": CRON_LIST,
        "cron_pause": CRON_PAUSE,
    }.items()
}


def cron_job_args(cmd: b.CronFire) -> list[Any]:
    """The fire script's arguments: the compare-and-set, then the enqueue's fields."""
    args: list[Any] = [cmd.name, str(cmd.expected), str(cmd.tick)]
    for job in cmd.jobs:
        args += (job.id, job.task, job.queue, job.args, job.priority, float(job.delay_s),
                 job.max_attempts, "" if job.timeout_s is None else float(job.timeout_s),
                 float(job.result_ttl_s), job.idempotency_key or "")  # fmt: skip
    return args


def _state(pairs: list[bytes]) -> b.CronState:
    it = iter(pairs)
    get = {k.decode(): v.decode() for k, v in zip(it, it, strict=False)}.get
    return b.CronState(get("name", ""), get("definition", ""), get("node", ""),
                       float(get("registered_at", "0")), int(get("last_tick", "0")),
                       get("paused") == "1", get("last_job"))


def _fired(raw: list[Any]) -> b.CronFireReply:
    last = None if raw[1] is None else int(raw[1])
    return b.CronFireReply(raw[0].decode(), last, tuple(v.decode() for v in raw[2]),
                           float(raw[3]))


CRON_ENCODERS: dict[type, Callable[[Any], tuple[str, list[Any]]]] = {
    b.CronRegister: lambda c: ("cron_register", [
        c.node, *(v for e in c.entries for v in (e.name, e.definition))]),
    b.CronFire: lambda c: ("cron_fire", cron_job_args(c)),
    b.CronList: lambda c: ("cron_list", []),
    b.CronSetPaused: lambda c: ("cron_pause", [c.name, "1" if c.paused else "0"]),
}

CRON_DECODERS: dict[str, Callable[[Any, Any], Any]] = {
    "cron_register": lambda c, r: b.CronRegisterReply(
        tuple(_state(s) for s in r[0]), tuple(v.decode() for v in r[1]),
        tuple(sorted(v.decode() for v in r[2]))),
    "cron_fire": lambda c, r: _fired(r),
    "cron_list": lambda c, r: b.CronListReply(
        tuple(sorted((_state(s) for s in r), key=lambda s: s.name))),
    "cron_pause": lambda c, r: b.CronSetPausedReply(r == 1),
}
