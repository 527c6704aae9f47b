"""The Lua scripts behind every state change of a job in Redis (no redis import here).

Each state change is one script, so a job's hash, its state sets, its events and its stream
entry never disagree, and all times come from one clock (Redis ``TIME``). Every script is
safe to run twice (a retried call after a lost reply changes nothing more). Key names are
built from the prefix ARGV (``"<stream>:"``; the layout is in connection.py): standalone
Redis or Sentinel, not Cluster.

``SCRIPTS`` maps each name to the source that connection.py registers: ``LIB`` (helpers)
followed by the body, except ``heartbeat``, which needs none.
"""

from __future__ import annotations

LIB = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function is_terminal(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' end
-- Append an event to the job's stream and the all-jobs stream. Its id is (attempt, n):
-- a higher attempt starts at n = 0, anything else continues the current numbering.
local function publish(p, id, kind, data, attempt)
  local jk = p .. 'job:' .. id
  local cur = tonumber(redis.call('HGET', jk, 'ev_attempt') or '0')
  local n = tonumber(redis.call('HGET', jk, 'ev_n') or '0')
  if attempt ~= nil and attempt > cur then cur = attempt; n = 0 end
  redis.call('HSET', jk, 'ev_attempt', cur, 'ev_n', n + 1)
  redis.call('XADD', p .. 'events:' .. id, 'MAXLEN', '~', 1000, '*',
             'a', cur, 'n', n, 'type', kind, 'data', data)
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', 10000, '*',
             'job', id, 'a', cur, 'n', n, 'type', kind, 'data', data)
end
-- Waiting jobs are ordered by priority (higher first), then arrival.
local function qscore(priority, seq) return (100 - tonumber(priority)) * 1e10 + tonumber(seq) end
local function move(p, id, from, to, score)
  if from then redis.call('ZREM', p .. 'state:' .. from, id) end
  redis.call('ZADD', p .. 'state:' .. to, score, id)
end
-- Acknowledge a delivered entry and delete it; an undelivered one is left for a worker
-- to read and drop (deleting it would make the group's lag unknown).
local function release(p, stream, group, entry)
  if entry and redis.call('XACK', stream, group, entry) == 1 then
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', p .. 'entries', entry)
  end
end
local function retire(p, id, ttl)
  redis.call('EXPIRE', p .. 'job:' .. id, ttl)
  redis.call('EXPIRE', p .. 'events:' .. id, ttl)
end
"""

# ARGV: prefix, stream, id, request json, priority, max_queue
SUBMIT = """
local p, stream, id = ARGV[1], ARGV[2], ARGV[3]
local jk = p .. 'job:' .. id
if redis.call('EXISTS', jk) == 1 then return {'ok'} end  -- a retried submit
local depth = redis.call('ZCARD', p .. 'state:queued')
if depth >= tonumber(ARGV[6]) then return {'full', tostring(depth)} end
local seq = redis.call('INCR', p .. 'seq')
local entry = redis.call('XADD', stream, '*', 'job', id)
redis.call('HSET', jk, 'id', id, 'seq', seq, 'state', 'queued', 'priority', ARGV[5],
           'request', ARGV[4], 'created_at', fmt(now()), 'attempts', 0,
           'cancel_requested', 0, 'entry', entry, 'ev_attempt', 0, 'ev_n', 0)
move(p, id, nil, 'queued', qscore(ARGV[5], seq))
redis.call('ZADD', p .. 'index', seq, id)
redis.call('HSET', p .. 'entries', entry, id)
publish(p, id, 'queued', cjson.encode({position = depth}), 0)
return {'ok'}
"""

# ARGV: prefix, id, history ttl
CANCEL = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local st = redis.call('HGET', jk, 'state')
if not st then return 'missing' end
if st == 'queued' then
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', fmt(now()), 'cancel_requested', 1)
  move(p, id, 'queued', 'cancelled', redis.call('HGET', jk, 'seq'))
  publish(p, id, 'cancelled', cjson.encode({at_step = 0}), nil)
  retire(p, id, tonumber(ARGV[3]))
  return 'cancelled'
end
if st == 'running' then redis.call('HSET', jk, 'cancel_requested', 1) end
return st
"""

# ARGV: prefix, stream, group, id, entry, consumer, max_attempts, history ttl
# The entry is a token: its job (P entries) is swapped with the best waiting job when that
# is another one, so the highest priority runs first and each job keeps one live entry.
START = """
local p, stream, group, entry, me = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local id = redis.call('HGET', p .. 'entries', entry) or ARGV[4]
local jk = p .. 'job:' .. id
local st = redis.call('HGET', jk, 'state')
if st == 'queued' and redis.call('HGET', jk, 'entry') == entry then
  local best = redis.call('ZRANGE', p .. 'state:queued', 0, 0)[1]
  if best and best ~= id then
    local bk = p .. 'job:' .. best
    local other = redis.call('HGET', bk, 'entry')
    redis.call('HSET', bk, 'entry', entry)
    redis.call('HSET', jk, 'entry', other)
    redis.call('HSET', p .. 'entries', entry, best, other, id)
    id, jk = best, bk
  end
end
if not st or is_terminal(st) or redis.call('HGET', jk, 'entry') ~= entry then
  release(p, stream, group, entry)  -- finished, cancelled, expired, or an old entry
  return {'skip'}
end
local attempts = tonumber(redis.call('HGET', jk, 'attempts'))
local seq = redis.call('HGET', jk, 'seq')
if st == 'running' and redis.call('HGET', jk, 'worker') == me then
  return {'run', redis.call('HGETALL', jk)}  -- a retried start
end
if redis.call('HGET', jk, 'cancel_requested') == '1' then
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', fmt(now()))
  redis.call('HDEL', jk, 'step', 'steps', 'eta_s', 'preview')
  move(p, id, st, 'cancelled', seq)
  publish(p, id, 'cancelled', cjson.encode({at_step = 0}), nil)
  release(p, stream, group, entry)
  retire(p, id, tonumber(ARGV[8]))
  return {'skip'}
end
if attempts >= tonumber(ARGV[7]) then
  local err = 'dead letter: started ' .. attempts .. ' times without finishing '
    .. '(its worker died or stopped each time)'
  local last = redis.call('HGET', jk, 'last_error')
  if last then err = err .. '; last error: ' .. last end
  redis.call('HSET', jk, 'state', 'failed', 'finished_at', fmt(now()), 'error', err,
             'result', cjson.encode({dead_letter = true}))
  redis.call('HDEL', jk, 'step', 'steps', 'eta_s', 'preview')
  move(p, id, st, 'failed', seq)
  publish(p, id, 'failed', cjson.encode({error = err, dead_letter = true}), nil)
  release(p, stream, group, entry)
  retire(p, id, tonumber(ARGV[8]))
  return {'dead', err, id}
end
local before = redis.call('HGET', jk, 'worker')
attempts = attempts + 1
redis.call('HSET', jk, 'state', 'running', 'attempts', attempts, 'started_at', fmt(now()),
           'worker', me)
redis.call('HDEL', jk, 'step', 'steps', 'eta_s', 'preview')
move(p, id, st, 'running', seq)
local data = {attempt = attempts, worker = me}
if st == 'running' and before then data.taken_over_from = before end
publish(p, id, 'started', cjson.encode(data), attempts)
return {'run', redis.call('HGETALL', jk)}
"""

# ARGV: prefix, id, consumer, attempt, step, steps, eta_s, data, preview
STEP = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'cancel_requested')
if v[1] ~= 'running' or v[2] ~= ARGV[4] or v[3] ~= ARGV[3] then return {0, 1} end
redis.call('HSET', jk, 'step', ARGV[5], 'steps', ARGV[6], 'eta_s', ARGV[7])
if ARGV[9] and ARGV[9] ~= '' then redis.call('HSET', jk, 'preview', ARGV[9]) end
publish(p, id, 'step', ARGV[8], tonumber(ARGV[4]))
return {1, tonumber(v[4] or '0')}
"""

# ARGV: stream, group, consumer, entry, prefix, id
HEARTBEAT = """
local pend = redis.call('XPENDING', ARGV[1], ARGV[2], ARGV[4], ARGV[4], 1)
if #pend == 0 or pend[1][2] ~= ARGV[3] then return {0, 0} end
redis.call('XCLAIM', ARGV[1], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
local c = redis.call('HGET', ARGV[5] .. 'job:' .. ARGV[6], 'cancel_requested')
return {1, tonumber(c or '0')}
"""

# ARGV: prefix, stream, group, id, consumer, attempt, state, result, error, data, ttl
# The first terminal write wins. Success is accepted from any attempt (its result is
# real); a failure or cancellation only from the worker that holds the current attempt.
FINISH = """
local p, stream, group, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'entry', 'seq')
if not v[1] then return 0 end
if is_terminal(v[1]) then release(p, stream, group, v[4]); return 0 end
local new = ARGV[7]
if new ~= 'succeeded' and (v[2] ~= ARGV[6] or v[3] ~= ARGV[5]) then return 0 end
redis.call('HSET', jk, 'state', new, 'finished_at', fmt(now()))
if ARGV[8] ~= '' then redis.call('HSET', jk, 'result', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', jk, 'error', ARGV[9]) end
redis.call('HDEL', jk, 'step', 'steps', 'eta_s', 'preview')
move(p, id, v[1], new, v[5])
publish(p, id, new, ARGV[10], nil)
release(p, stream, group, v[4])
retire(p, id, tonumber(ARGV[11]))
return 1
"""

# ARGV: prefix, stream, group, id, consumer, attempt, error, data, keep_attempt
# A failed attempt goes back to the end of the stream as a new entry (the old one is
# acknowledged). keep_attempt = 1 when a stopping worker hands the job back: not a failure.
REQUEUE = """
local p, stream, group, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = p .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'attempts', 'worker', 'entry', 'priority')
if v[1] ~= 'running' or v[2] ~= ARGV[6] or v[3] ~= ARGV[5] then return 0 end
local entry = redis.call('XADD', stream, '*', 'job', id)
release(p, stream, group, v[4])
redis.call('HSET', p .. 'entries', entry, id)
redis.call('HSET', jk, 'state', 'queued', 'entry', entry)
if ARGV[7] ~= '' then redis.call('HSET', jk, 'last_error', ARGV[7]) end
if ARGV[9] == '1' then redis.call('HINCRBY', jk, 'attempts', -1) end
redis.call('HDEL', jk, 'started_at', 'worker', 'step', 'steps', 'eta_s', 'preview')
move(p, id, 'running', 'queued', qscore(v[5] or 0, redis.call('INCR', p .. 'seq')))
publish(p, id, 'requeued', ARGV[8], nil)
return 1
"""

# ARGV: prefix, id, kind, data: an event of a waiting job (its new position and ETA)
NOTE = """
local p, id = ARGV[1], ARGV[2]
if redis.call('HGET', p .. 'job:' .. id, 'state') ~= 'queued' then return 0 end
publish(p, id, ARGV[3], ARGV[4], nil)
return 1
"""

# ARGV: prefix, shape label, service seconds, window, cold: the label's recent service
# times (as queue/eta.py's ServiceTimes.observe: a cold run counts only until a warm one)
SERVICE = """
local key, label = ARGV[1] .. 'service_s', ARGV[2]
local marker = label .. '|cold'
local raw = redis.call('HGET', key, label)
local values = {}
if raw and string.sub(raw, 1, 1) == '[' then values = cjson.decode(raw) end
local cold = ARGV[5] == '1'
if cold and #values > 0 then return #values end
if not cold and redis.call('HDEL', key, marker) == 1 then values = {} end
if cold then redis.call('HSET', key, marker, 1) end
table.insert(values, tonumber(ARGV[3]))
while #values > tonumber(ARGV[4]) do table.remove(values, 1) end
redis.call('HSET', key, label, cjson.encode(values))
return #values
"""

# ARGV: prefix, consumer, info json
HELLO = """
local t = now()
redis.call('HSET', ARGV[1] .. 'workers', ARGV[2], ARGV[3])
redis.call('ZADD', ARGV[1] .. 'seen', t, ARGV[2])
return fmt(t)
"""

# ARGV: prefix, fresh_s -> {consumer, info, seconds since its hello, ...} of the workers
# heard from in the last fresh_s seconds (Redis clock)
WORKERS = """
local t = now()
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'seen', t - tonumber(ARGV[2]), '+inf',
                       'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  table.insert(out, ids[i])
  table.insert(out, redis.call('HGET', ARGV[1] .. 'workers', ids[i]) or '{}')
  table.insert(out, fmt(t - tonumber(ids[i + 1])))
end
return out
"""

# ARGV: prefix, idle_s -> consumers not heard from for idle_s seconds, now forgotten
FORGET = """
local t = now()
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'seen', '-inf', t - tonumber(ARGV[2]))
for _, c in ipairs(ids) do
  redis.call('ZREM', ARGV[1] .. 'seen', c)
  redis.call('HDEL', ARGV[1] .. 'workers', c)
end
return ids
"""


SCRIPTS: dict[str, str] = {
    **{name: LIB + body for name, body in (
        ("submit", SUBMIT), ("cancel", CANCEL), ("start", START), ("step", STEP),
        ("finish", FINISH), ("requeue", REQUEUE), ("note", NOTE), ("service", SERVICE),
        ("hello", HELLO), ("workers", WORKERS), ("forget", FORGET))},
    "heartbeat": HEARTBEAT,
}
