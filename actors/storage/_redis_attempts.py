"""The Redis backend's attempt history and running attempt: the Lua that appends an
attempt's record, and the heartbeat, release and progress scripts.

Rules of this module: those of `_redis_scripts` (every script is `PRELUDE + HISTORY +
body`). A job hash keeps its history in `history`: the `_history` JSON entries joined by
newlines (JSON text never holds a raw newline), `history_n` of them, so appending is one
string operation and dropping the oldest past `HISTORY_MAX` cuts at the first newline;
Python reads it as the JSON array `[` + entries joined by commas + `]`. The write that
ends an attempt appends its entry in the same script.
"""

from __future__ import annotations

from gotask._job import HISTORY_MAX

__all__ = ["HEARTBEAT", "HISTORY", "PROGRESS", "RELEASE"]

HISTORY = r"""
local HISTORY_MAX = @HISTORY_MAX@
-- The history of `key` (text `h`, `n` entries) with the attempt that ends now appended;
-- an entry dropped past HISTORY_MAX is counted in `history_dropped`.
local function appended(key, attempt, node, leased_at, outcome, err, h, n)
  local e = '[' .. attempt .. ',' .. (node and cjson.encode(node) or 'null') .. ','
    .. (leased_at or 'null') .. ',' .. snow .. ',"' .. outcome .. '",'
    .. (err and cjson.encode(err) or 'null') .. ']'
  n = tonumber(n or 0)
  if not h or h == '' or n == 0 then return e, 1 end
  h, n = h .. '\n' .. e, n + 1
  if n > HISTORY_MAX then
    h, n = string.sub(h, string.find(h, '\n', 1, true) + 1), n - 1
    redis.call('HINCRBY', key, 'history_dropped', 1)
  end
  return h, n
end
-- End job `j`'s current attempt with `outcome` (and error text `err`, or nil).
local function ended(j, outcome, err)
  local v = redis.call('HMGET', j.key, 'leased_at', 'history', 'history_n')
  local h, n = appended(j.key, j.attempt, j.lease_node, v[1], outcome, err, v[2], v[3])
  redis.call('HSET', j.key, 'history', h, 'history_n', n)
end
""".replace("@HISTORY_MAX@", str(HISTORY_MAX))

HEARTBEAT = r"""
local expires = now + tonumber(ARGV[3])
local sexp = fmt(expires)
local started = ARGV[4] == '1'
local statuses = {}
for i = 5, #ARGV, 2 do
  local id, status = ARGV[i], 'stale'
  local q = redis.call('HGET', IDX, id)
  if q then
    local key = qk(q, 'j:' .. id)
    local v = redis.call('HMGET', key, 'state', 'attempt', 'cancel_requested')
    if v[1] == 'active' and tonumber(v[2] or 0) == tonumber(ARGV[i + 1]) then
      redis.call('HSET', key, 'lease_expires_at', sexp)
      if started then redis.call('HSET', key, 'started_attempt', v[2]) end
      redis.call('ZADD', qk(q, 'leases'), sexp, id)
      status = (v[3] == '1') and 'cancel' or 'ok'
    end
  end
  statuses[#statuses + 1] = status
end
return {statuses, sexp}
"""

RELEASE = r"""
local statuses, states = {}, {}
for i = 3, #ARGV, 2 do
  local j = load(ARGV[i])
  local status = fence(j, tonumber(ARGV[i + 1]))
  if status == 'ok' then
    unlease(j)
    ended(j, 'released', nil)
    redis.call('HINCRBY', j.key, 'releases', 1)
    requeue(j)
  end
  statuses[#statuses + 1] = status
  states[#states + 1] = j and j.state or 'missing'
  if status == 'ok' then ev_id(j.id, j.watched) end
end
flush()
return {statuses, states}
"""

PROGRESS = r"""
local accepted = {}
for i = 3, #ARGV, 4 do
  local id, ok = ARGV[i], 0
  local q = redis.call('HGET', IDX, id)
  if q then
    local key = qk(q, 'j:' .. id)
    local v = redis.call('HMGET', key, 'state', 'attempt', 'watched')
    if v[1] == 'active' and tonumber(v[2] or 0) == tonumber(ARGV[i + 1]) then
      redis.call('HSET', key, 'progress', ARGV[i + 2], 'progress_message', ARGV[i + 3])
      ok = 1
      ev_id(id, v[3])
    end
  end
  accepted[#accepted + 1] = ok
end
flush()
return accepted
"""
