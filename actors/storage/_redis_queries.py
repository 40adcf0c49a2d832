"""The Redis backend's scripts for reads, maintenance, the DLQ and the node registry.

Rules of this module: those of `_redis_scripts` (which adds the prelude to each and
owns the `SCRIPTS` table). These scripts run off the hot path; the listings scan in
one script and return candidates per queue, which Python merges in id order.
"""

from __future__ import annotations

from gotask._job import UNSTARTED_FREE_MAX

__all__ = [
    "COUNT",
    "EXPIRE_NODES",
    "GET",
    "LIST",
    "LIST_NODES",
    "PROMOTE",
    "PURGE",
    "PURGE_DEAD",
    "REGISTER_NODE",
    "REQUEUE",
    "RETRY_DEAD",
]

GET = r"""
local watch, out = ARGV[3] == 'watch', {}
for i = 4, #ARGV do
  local q = redis.call('HGET', IDX, ARGV[i])
  if q then
    local key = qk(q, 'j:' .. ARGV[i])
    if watch then redis.call('HSET', key, 'watched', '1') end
    out[#out + 1] = redis.call('HGETALL', key)
  else
    out[#out + 1] = false
  end
end
return out
"""

LIST = r"""
local queue, state, limit, after, index = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local task = ARGV[8] or ''
local CHUNK = 512
local out = {}
local function scan(q)
  local found, low = 0, (after ~= '' and ('(' .. after) or '-')
  while found < limit do
    local ids = redis.call('ZRANGEBYLEX', qk(q, index), low, '+', 'LIMIT', 0, CHUNK)
    for _, id in ipairs(ids) do
      local key = qk(q, 'j:' .. id)
      if (state == '' or redis.call('HGET', key, 'state') == state)
          and (task == '' or redis.call('HGET', key, 'task') == task) then
        out[#out + 1] = redis.call('HGETALL', key)
        found = found + 1
        if found == limit then return end
      end
    end
    if #ids < CHUNK then return end
    low = '(' .. ids[#ids]
  end
end
if queue ~= '' then
  scan(queue)
else
  for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do scan(q) end
end
return out
"""

COUNT = r"""
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
  out[#out + 1] = q
  out[#out + 1] = redis.call('HGETALL', qk(q, 'counts'))
end
return out
"""

REQUEUE = r"""
local UNSTARTED_FREE_MAX = @UNSTARTED_FREE_MAX@
local moved = {queued = {}, dead = {}, cancelled = {}}
local limit = tonumber(ARGV[3])
local function none(m) return 0 end
for n, e in ipairs(earliest('leases', limit, none)) do
  if n > limit then break end
  local j = load(e[3])
  unlease(j)
  local v = redis.call('HMGET', j.key, 'started_attempt', 'unstarted_expiries')
  local where = 'attempt ' .. j.attempt .. " on node '" .. tostring(j.lease_node) .. "'"
  local etype, err = nil, nil
  if tonumber(v[1] or 0) == j.attempt then
    etype, err = 'NodeLost', where .. ' was running when its node stopped renewing the '
      .. 'lease (the node died, hung or lost storage)'
    ended(j, 'node_lost', etype .. ': ' .. err)
  elseif tonumber(v[2] or 0) < UNSTARTED_FREE_MAX then
    ended(j, 'not_started', nil)
    redis.call('HINCRBY', j.key, 'unstarted_expiries', 1)
    redis.call('HINCRBY', j.key, 'releases', 1)
    j.releases = j.releases + 1
  else
    etype, err = 'LeaseExpired', 'lease of ' .. where .. ' expired before the job was known '
      .. 'to start (' .. UNSTARTED_FREE_MAX .. ' such expiries were free already)'
    ended(j, 'lease_expired', etype .. ': ' .. err)
  end
  if etype then
    redis.call('HSET', j.key, 'error_type', etype, 'error', err)
    redis.call('HDEL', j.key, 'traceback')
  end
  if exhausted(j) and not j.cancel then finish(j, 'dead') else requeue(j) end
  local list = moved[j.state]
  list[#list + 1] = j.id
  ev_id(j.id, j.watched)
end
flush()
return {moved.queued, moved.dead, moved.cancelled}
""".replace("@UNSTARTED_FREE_MAX@", str(UNSTARTED_FREE_MAX))

PROMOTE = r"""
local limit = tonumber(ARGV[3])
local function seq_of(m) return struct.unpack('>d', m, 9) end
local promoted = 0
for n, e in ipairs(earliest('due', limit, seq_of)) do
  if n > limit then break end
  redis.call('ZREM', qk(e[4], 'due'), e[3])
  make_ready(load(string.sub(e[3], 17)))
  promoted = n
end
flush()
return promoted
"""

PURGE = r"""
local limit = tonumber(ARGV[3])
local function none(m) return 0 end
local purged = 0
for n, e in ipairs(earliest('expiry', limit, none)) do
  if n > limit then break end
  local j = load(e[3])
  if j and (j.state == 'succeeded' or j.state == 'cancelled') then
    remove(j)
    purged = purged + 1
  else
    redis.call('ZREM', qk(e[4], 'expiry'), e[3])
  end
end
flush()
return purged
"""

# `ARGV[3]` is 'all' or 'ids' (then the ids follow).
_DEAD_TARGETS = r"""
local targets = {}
if ARGV[3] == 'all' then
  for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
    for _, id in ipairs(redis.call('ZRANGE', qk(q, 'dead'), 0, -1)) do
      targets[#targets + 1] = id
    end
  end
else
  for i = 4, #ARGV do targets[#targets + 1] = ARGV[i] end
end
"""

RETRY_DEAD = _DEAD_TARGETS + r"""
local revived = 0
for _, id in ipairs(targets) do
  local j = load(id)
  if j and j.state == 'dead' then
    redis.call('ZREM', qk(j.q, 'dead'), id)
    j.due_at, j.cancel = now, false
    redis.call('HSET', j.key, 'attempt_base', j.attempt - j.releases, 'due_at', snow)
    redis.call('HDEL', j.key, 'finished_at', 'expires_at', 'cancel_requested')
    make_ready(j)
    revived = revived + 1
    ev_id(id, j.watched)
  end
end
flush()
return revived
"""

PURGE_DEAD = _DEAD_TARGETS + r"""
local purged = 0
for _, id in ipairs(targets) do
  local j = load(id)
  if j and j.state == 'dead' then
    remove(j)
    purged = purged + 1
  end
end
flush()
return purged
"""

REGISTER_NODE = r"""
local node, info, ttl, nodes_max = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local key = P .. ':node:' .. node
if redis.call('EXISTS', key) == 0 then
  local n = redis.call('SCARD', P .. ':nodes')
  if n >= nodes_max then
    return redis.error_reply('GOTASK-FULL ' .. n .. ' nodes registered; nodes_max=' .. nodes_max)
  end
  redis.call('HSET', key, 'first_seen', snow)
end
local exp = fmt(now + ttl)
redis.call('HSET', key, 'info', info, 'last_seen', snow, 'expires_at', exp)
redis.call('SADD', P .. ':nodes', node)
return exp
"""

LIST_NODES = r"""
local out = {snow}
for _, node in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  local v = redis.call('HMGET', P .. ':node:' .. node, 'info', 'first_seen', 'last_seen',
    'expires_at')
  if v[4] then out[#out + 1] = {node, v[1], v[2], v[3], v[4]} end
end
return out
"""

EXPIRE_NODES = r"""
local removed = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  local exp = redis.call('HGET', P .. ':node:' .. node, 'expires_at')
  if not exp or tonumber(exp) <= now then
    redis.call('DEL', P .. ':node:' .. node, P .. ':fair:' .. node)
    redis.call('SREM', P .. ':nodes', node)
    removed[#removed + 1] = node
  end
end
return removed
"""
