"""The Lua scripts of the Redis backend: every command of the storage contract, atomic.

This module holds the prelude and the job lifecycle (enqueue, lease, ack, nack,
cancel); `_redis_attempts` the attempt history and the running attempt (heartbeat,
release, progress); `_redis_queries` the reads, maintenance, DLQ and node registry.

Rules of this module:
- One script per storage command; each is `PRELUDE + body` and runs atomically.
  `ARGV[1]` is the key prefix, `ARGV[2]` the storage time in seconds, or '' to read
  Redis `TIME` inside the script (production). Tests pin the clock by passing it.
- Keys (docs/redis.md): per queue `P:{queue}:...` (one hash tag per queue: ready, due,
  leases, expiry, dead, ids, counts, and the job hashes `P:{queue}:j:<id>`); global
  `P:idx` (id -> queue), `P:keys` (idempotency key -> id), `P:queues`, `P:seq`,
  `P:nodes`, `P:node:<name>`, `P:fair:<node>`; pub/sub channel `P:events`.
- Ready order lives in the member, not the score: score `-priority`, member
  `struct.pack('>dd', due_at, seq) .. id`. Big-endian non-negative doubles compare
  bytewise like numbers, so ZPOPMIN yields priority, then due time, then enqueue order,
  and a released or expired job gets its old member back (keeps its place).
- Times are stored as `%.17g` strings (exact round trip of a double); absent fields
  mean None (or 0 / '' / false for counters, progress message, cancel flag), and
  `lease_expires_at` means something only while the job is `active` (an ack leaves it
  in place; a record of any other state reads it as None). Records
  are returned as HGETALL pairs (cheaper in Lua than naming 28 fields); a pair that
  repeats a field overrides the earlier one. A lease returns each job as it read it,
  before leasing it: Python applies the lease's fields (`_redis_codec.leased_records`).
- Every change of a job's state goes through `move`, which keeps the per-queue counts
  (flushed once per script). Scripts that change jobs publish one event on `P:events`:
  msgpack `[now, ids, ready_queues, [queue, due]..., [id, node, attempt]...]`; `ids`
  holds only jobs flagged `watched` (the `get` script flags them for a watcher).
- Lua compares strings with strcoll, so ids are never ordered in Lua: listings return
  candidates per queue and Python merges them.
- A lease stops at a byte budget (estimated from the jobs' arguments, as the memory
  shell does) so its reply fits one wire frame; the jobs past it stay queued untouched.
"""

from __future__ import annotations

from ._redis_attempts import HEARTBEAT, HISTORY, PROGRESS, RELEASE
from ._redis_queries import (
    COUNT,
    EXPIRE_NODES,
    GET,
    LIST,
    LIST_NODES,
    PROMOTE,
    PURGE,
    PURGE_DEAD,
    REGISTER_NODE,
    REQUEUE,
    RETRY_DEAD,
)

__all__ = ["SCRIPTS"]

PRELUDE = r"""
local P = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local IDX, IKEYS, QUEUES = P .. ':idx', P .. ':keys', P .. ':queues'
local CORE = {'state', 'attempt', 'releases', 'attempt_base', 'settled_attempt',
  'max_attempts', 'priority', 'due_at', 'seq', 'cancel_requested', 'lease_node',
  'result_ttl_s', 'idempotency_key', 'watched'}

local function fmt(x) return string.format('%.17g', x) end
local snow = fmt(now)
local function qk(q, suffix) return P .. ':{' .. q .. '}:' .. suffix end

local EV_IDS, EV_READY, EV_DUE, EV_CANCEL = {}, {}, {}, {}
-- Ids go out only for jobs a watcher reads with `watch` (flag `watched`): nobody else
-- looks at them, and a drain would otherwise publish every id twice.
local function ev_id(id, watched) if watched then EV_IDS[#EV_IDS + 1] = id end end
local function ev_due(q, t)
  local d = EV_DUE[q]
  if not d or t < d then EV_DUE[q] = t end
end

local function load(id)
  local q = redis.call('HGET', IDX, id)
  if not q then return nil end
  local key = qk(q, 'j:' .. id)
  local v = redis.call('HMGET', key, unpack(CORE))
  return {id = id, q = q, key = key, state = v[1], attempt = tonumber(v[2] or 0),
    releases = tonumber(v[3] or 0), base = tonumber(v[4] or 0),
    settled = tonumber(v[5] or 0), max_attempts = tonumber(v[6]),
    priority = tonumber(v[7]), due_at = tonumber(v[8]), seq = tonumber(v[9]),
    cancel = v[10] == '1', lease_node = v[11], ttl = tonumber(v[12]), ikey = v[13],
    watched = v[14] == '1'}
end

local function member(j) return struct.pack('>dd', j.due_at, j.seq) .. j.id end

local DELTA = {}
local function count(q, state, n)
  local d = DELTA[q]
  if not d then d = {}; DELTA[q] = d end
  d[state] = (d[state] or 0) + n
end
local function move(j, to)
  if j.state then count(j.q, j.state, -1) end
  count(j.q, to, 1)
  j.state = to
end

local function make_ready(j)
  move(j, 'queued')
  redis.call('HSET', j.key, 'state', 'queued')
  redis.call('ZADD', qk(j.q, 'ready'), -j.priority, member(j))
  EV_READY[j.q] = true
end

local function schedule(j, due)
  move(j, 'scheduled')
  j.due_at = due
  redis.call('HSET', j.key, 'state', 'scheduled', 'due_at', fmt(due))
  redis.call('ZADD', qk(j.q, 'due'), fmt(due), member(j))
  ev_due(j.q, due)
end

local function finish(j, to)
  move(j, to)
  redis.call('HDEL', j.key, 'lease_expires_at')
  if to == 'dead' then
    redis.call('HDEL', j.key, 'expires_at')
    redis.call('HSET', j.key, 'state', to, 'finished_at', snow)
    redis.call('ZADD', qk(j.q, 'dead'), 0, j.id)
  else
    local exp = now + j.ttl
    redis.call('HSET', j.key, 'state', to, 'finished_at', snow, 'expires_at', fmt(exp))
    redis.call('ZADD', qk(j.q, 'expiry'), fmt(exp), j.id)
  end
end

local function requeue(j)
  redis.call('HDEL', j.key, 'lease_expires_at')
  if j.cancel then finish(j, 'cancelled') else make_ready(j) end
end

local function unlease(j) redis.call('ZREM', qk(j.q, 'leases'), j.id) end

local function exhausted(j) return j.attempt - j.releases - j.base >= j.max_attempts end

local function fence(j, attempt)
  if not j then return 'stale' end
  if j.state == 'active' and j.attempt == attempt then return 'ok' end
  if attempt ~= 0 and j.settled == attempt then return 'duplicate' end
  return 'stale'
end

local function remove(j)
  redis.call('DEL', j.key)
  redis.call('HDEL', IDX, j.id)
  if j.ikey and redis.call('HGET', IKEYS, j.ikey) == j.id then
    redis.call('HDEL', IKEYS, j.ikey)
  end
  redis.call('ZREM', qk(j.q, 'dead'), j.id)
  redis.call('ZREM', qk(j.q, 'expiry'), j.id)
  redis.call('ZREM', qk(j.q, 'ids'), j.id)
  count(j.q, j.state, -1)
end

local function promote_queue(q, limit)
  local key = qk(q, 'due')
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', snow, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    redis.call('ZREM', key, m)
    make_ready(load(string.sub(m, 17)))
  end
  return #due
end

-- Up to `limit` (score, tiebreak, id, queue) entries of a per-queue zset with a score
-- <= now, over all queues, earliest first.
local function earliest(suffix, limit, tiebreak)
  local out = {}
  for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
    local r = redis.call('ZRANGEBYSCORE', qk(q, suffix), '-inf', snow, 'WITHSCORES',
      'LIMIT', 0, limit)
    for i = 1, #r, 2 do out[#out + 1] = {tonumber(r[i + 1]), tiebreak(r[i]), r[i], q} end
  end
  table.sort(out, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  return out
end

-- One call for many members (Lua's stack bounds unpack(): chunks of 1000 pairs).
local function zmany(cmd, key, args)
  for i = 1, #args, 2000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 1999, #args)))
  end
end
local function publish()
  local ready, due = {}, {}
  for q in pairs(EV_READY) do ready[#ready + 1] = q end
  for q, t in pairs(EV_DUE) do due[#due + 1] = q; due[#due + 1] = fmt(t) end
  if #EV_IDS + #ready + #due + #EV_CANCEL > 0 then
    redis.call('PUBLISH', P .. ':events', cmsgpack.pack({snow, EV_IDS, ready, due, EV_CANCEL}))
  end
end

local function flush()
  for q, d in pairs(DELTA) do
    local c = qk(q, 'counts')
    for s, n in pairs(d) do
      if n ~= 0 and redis.call('HINCRBY', c, s, n) == 0 then redis.call('HDEL', c, s) end
    end
    if redis.call('EXISTS', c) == 0 then redis.call('SREM', QUEUES, q) end
  end
  DELTA = {}
  publish()
end
"""

ENQUEUE = r"""
local ids, created, queues, zids, zready = {}, {}, {}, {}, {}
local seq = redis.call('INCRBY', P .. ':seq', (#ARGV - 2) / 10) - (#ARGV - 2) / 10
for i = 3, #ARGV, 10 do
  local id, q, ikey, delay = ARGV[i], ARGV[i + 2], ARGV[i + 9], tonumber(ARGV[i + 5])
  local known = false
  if ikey ~= '' then known = redis.call('HGET', IKEYS, ikey) end
  if not known and redis.call('HSETNX', IDX, id, q) == 0 then known = id end
  seq = seq + 1
  if known then
    ids[#ids + 1] = known
    created[#created + 1] = 0
  else
    local state, due_at = 'queued', snow
    if delay > 0 then state, due_at = 'scheduled', fmt(now + delay) end
    local j = {id = id, q = q, key = qk(q, 'j:' .. id), priority = tonumber(ARGV[i + 4]),
      due_at = tonumber(due_at), seq = seq}
    redis.call('HSET', j.key, 'id', id, 'task', ARGV[i + 1], 'queue', q, 'args', ARGV[i + 3],
      'priority', ARGV[i + 4], 'created_at', snow, 'due_at', due_at, 'state', state,
      'max_attempts', ARGV[i + 6], 'result_ttl_s', ARGV[i + 8], 'seq', seq)
    if ARGV[i + 7] ~= '' then redis.call('HSET', j.key, 'timeout_s', ARGV[i + 7]) end
    if ikey ~= '' then
      redis.call('HSET', j.key, 'idempotency_key', ikey)
      redis.call('HSET', IKEYS, ikey, id)
    end
    if not queues[q] then
      queues[q] = true
      redis.call('SADD', QUEUES, q)
      zids[q], zready[q] = {}, {}
    end
    local zi = zids[q]
    zi[#zi + 1] = 0
    zi[#zi + 1] = id
    count(q, state, 1)
    if state == 'scheduled' then
      redis.call('ZADD', qk(q, 'due'), due_at, member(j))
      ev_due(q, j.due_at)
    else
      local zr = zready[q]
      zr[#zr + 1] = -j.priority
      zr[#zr + 1] = member(j)
      EV_READY[q] = true
    end
    ids[#ids + 1] = id
    created[#created + 1] = 1
  end
end
-- Each queue's zsets take their members in one ZADD per script, not one per job.
for q, args in pairs(zids) do zmany('ZADD', qk(q, 'ids'), args) end
for q, args in pairs(zready) do
  if #args > 0 then zmany('ZADD', qk(q, 'ready'), args) end
end
flush()
return {ids, created}
"""

LEASE = r"""
local node, limit, timeout = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local bound_promote, budget, overhead = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local queues, bound = {}, 0
for i = 9, #ARGV, 2 do
  queues[#queues + 1] = {ARGV[i], tonumber(ARGV[i + 1])}
  bound = bound + tonumber(ARGV[i + 1])
end
local expires = now + timeout
local sexp = fmt(expires)
local out, size, full = {}, 0, false

local function has_ready(q) return redis.call('ZCARD', qk(q, 'ready')) > 0 end

-- Puts popped members back untouched (their place is their member).
local function unpop(q, popped, from)
  for k = from, #popped, 2 do redis.call('ZADD', qk(q, 'ready'), popped[k + 1], popped[k]) end
  EV_READY[q] = true
end

-- Leases up to n ready jobs of q in order, within the reply's byte budget.
local function take(q, n)
  local popped = redis.call('ZPOPMIN', qk(q, 'ready'), n)
  local jk = qk(q, 'j:')
  local leases, taken = {}, 0
  for i = 1, #popped, 2 do
    local id = string.sub(popped[i], 17)
    local key = jk .. id
    local row = redis.call('HGETALL', key)
    local attempt, args, watched = 1, '', false
    for k = 1, #row, 2 do
      if row[k] == 'attempt' then attempt = tonumber(row[k + 1]) + 1
      elseif row[k] == 'args' then args = row[k + 1]
      elseif row[k] == 'watched' then watched = true end
    end
    size = size + #args + overhead
    if #out > 0 and size > budget then
      full = true
      unpop(q, popped, i)
      break
    end
    attempt = tostring(attempt)
    redis.call('HSET', key, 'attempt', attempt, 'state', 'active', 'leased_at', snow,
      'lease_expires_at', sexp, 'lease_node', node)
    out[#out + 1] = row
    leases[#leases + 1] = sexp
    leases[#leases + 1] = id
    taken = taken + 1
    ev_id(id, watched)
  end
  zmany('ZADD', qk(q, 'leases'), leases)
  count(q, 'queued', -taken)
  count(q, 'active', taken)
end

local credit
local function pick(live)
  if not credit then
    credit = {}
    local raw = redis.call('HGETALL', P .. ':fair:' .. node)
    for i = 1, #raw, 2 do credit[raw[i]] = tonumber(raw[i + 1]) end
  end
  local best, best_credit, total = 1, -math.huge, 0
  for i, q in ipairs(live) do
    local value = math.min((credit[q[1]] or 0) + q[2], bound)
    credit[q[1]] = value
    total = total + q[2]
    if value > best_credit then best, best_credit = i, value end
  end
  credit[live[best][1]] = math.max(best_credit - total, -bound)
  return best
end

for _, q in ipairs(queues) do promote_queue(q[1], bound_promote) end
local live = {}
for _, q in ipairs(queues) do
  if has_ready(q[1]) and redis.call('SISMEMBER', P .. ':paused', q[1]) == 0 then
    live[#live + 1] = q
  end
end
while #live > 0 and #out < limit and not full do
  if #live == 1 then
    take(live[1][1], limit - #out)
    break
  end
  local i = pick(live)
  local name = live[i][1]
  take(name, 1)
  if not has_ready(name) then table.remove(live, i) end
end
if credit then
  local fk = P .. ':fair:' .. node
  for q, v in pairs(credit) do redis.call('HSET', fk, q, v) end
  redis.call('EXPIRE', fk, 86400)
end
local next_due = false
if #out == 0 then
  for _, q in ipairs(queues) do
    local first = redis.call('ZRANGE', qk(q[1], 'due'), 0, 0, 'WITHSCORES')
    if first[2] and (not next_due or tonumber(first[2]) < next_due) then
      next_due = tonumber(first[2])
    end
  end
  if next_due then next_due = fmt(next_due) end
end
flush()
return {out, next_due, snow}
"""


ACK = r"""
local statuses, unleased, expiring, expiry_of, jkeys, acked = {}, {}, {}, {}, {}, {}
local function jkey(q)
  local jk = jkeys[q]
  if not jk then
    jk = qk(q, 'j:')
    jkeys[q], unleased[q], expiring[q], acked[q] = jk, {}, {}, 0
  end
  return jk
end
local function read(key)
  return redis.call('HMGET', key, 'state', 'attempt', 'settled_attempt', 'result_ttl_s',
    'watched', 'id', 'queue', 'lease_node', 'leased_at', 'history', 'history_n')
end
for i = 3, #ARGV, 4 do
  local id, attempt, q = ARGV[i], ARGV[i + 1], ARGV[i + 3]
  local status, key, v = 'stale', nil, nil
  -- The worker names the job's queue, sparing the index lookup; the hash must agree
  -- (its own id and queue), else the hint is ignored.
  if q ~= '' then
    key = jkey(q) .. id
    v = read(key)
    if v[6] ~= id or v[7] ~= q then q = '' end
  end
  if q == '' then
    q = redis.call('HGET', IDX, id)
    if q then
      key = jkey(q) .. id
      v = read(key)
    end
  end
  if q then
    if v[1] == 'active' and v[2] == attempt then
      local exp = expiry_of[v[4]]
      if not exp then
        exp = fmt(now + tonumber(v[4]))
        expiry_of[v[4]] = exp
      end
      -- lease_expires_at stays: it is read only while a job is active (one call less)
      local h, hn = appended(key, v[2], v[8], v[9], 'succeeded', nil, v[10], v[11])
      redis.call('HSET', key, 'settled_attempt', attempt, 'result', ARGV[i + 2],
        'progress', '1', 'state', 'succeeded', 'finished_at', snow, 'expires_at', exp,
        'history', h, 'history_n', hn)
      redis.call('HDEL', key, 'error_type', 'error', 'traceback')  -- no stale error
      local u, e = unleased[q], expiring[q]
      u[#u + 1] = id
      e[#e + 1] = exp
      e[#e + 1] = id
      acked[q] = acked[q] + 1
      status = 'ok'
      ev_id(id, v[5])
    elseif attempt ~= '0' and v[3] == attempt then
      status = 'duplicate'
    end
  end
  statuses[#statuses + 1] = status
end
for q, n in pairs(acked) do
  if n > 0 then
    count(q, 'active', -n)
    count(q, 'succeeded', n)
  end
end
for q, ids in pairs(unleased) do
  for i = 1, #ids, 4000 do
    redis.call('ZREM', qk(q, 'leases'), unpack(ids, i, math.min(i + 3999, #ids)))
  end
end
for q, args in pairs(expiring) do
  if #args > 0 then zmany('ZADD', qk(q, 'expiry'), args) end
end
flush()
return statuses
"""

NACK = r"""
local statuses, states = {}, {}
for i = 3, #ARGV, 8 do
  local j = load(ARGV[i])
  local status = fence(j, tonumber(ARGV[i + 1]))
  if status == 'ok' then
    local outcome = ARGV[i + 6]
    local cancelled = outcome == 'cancelled' or (outcome == 'retry' and j.cancel)
    ended(j, cancelled and 'cancelled' or 'failed', ARGV[i + 7])
    unlease(j)
    redis.call('HSET', j.key, 'settled_attempt', ARGV[i + 1], 'error_type', ARGV[i + 2],
      'error', ARGV[i + 3], 'traceback', ARGV[i + 4])
    redis.call('HDEL', j.key, 'lease_expires_at')
    if cancelled then
      finish(j, 'cancelled')
    elseif outcome == 'dead' or exhausted(j) then
      finish(j, 'dead')
    else
      schedule(j, now + (tonumber(ARGV[i + 5]) or 0))
    end
  end
  statuses[#statuses + 1] = status
  states[#states + 1] = j and j.state or 'missing'
  if status == 'ok' then ev_id(j.id, j.watched) end
end
flush()
return {statuses, states}
"""



CANCEL = r"""
local states = {}
for i = 3, #ARGV do
  local j = load(ARGV[i])
  if not j then
    states[#states + 1] = 'missing'
  else
    if j.state == 'queued' then
      redis.call('ZREM', qk(j.q, 'ready'), member(j))
      finish(j, 'cancelled')
    elseif j.state == 'scheduled' then
      redis.call('ZREM', qk(j.q, 'due'), member(j))
      finish(j, 'cancelled')
    elseif j.state == 'active' then
      redis.call('HSET', j.key, 'cancel_requested', '1')
      if j.lease_node then
        EV_CANCEL[#EV_CANCEL + 1] = j.id
        EV_CANCEL[#EV_CANCEL + 1] = j.lease_node
        EV_CANCEL[#EV_CANCEL + 1] = j.attempt
      end
    end
    states[#states + 1] = j.state
    ev_id(j.id, j.watched)
  end
end
flush()
return states
"""

#: Script name -> full Lua source (prelude included).
SCRIPTS: dict[str, str] = {
    name: PRELUDE + HISTORY + body
    for name, body in {
        "enqueue": ENQUEUE, "lease": LEASE, "heartbeat": HEARTBEAT, "ack": ACK,
        "nack": NACK, "release": RELEASE, "progress": PROGRESS, "cancel": CANCEL,
        "get": GET, "list": LIST, "count": COUNT, "requeue": REQUEUE, "promote": PROMOTE,
        "purge": PURGE, "retry_dead": RETRY_DEAD, "purge_dead": PURGE_DEAD,
        "register_node": REGISTER_NODE, "list_nodes": LIST_NODES,
        "expire_nodes": EXPIRE_NODES,
    }.items()
}
