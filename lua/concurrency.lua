-- Concurrency: at most `limit` units in flight. State: a sorted set of
-- leases scored by when they run out (µs); a holder of cost c has the c
-- members "<lease>:1" .. "<lease>:c". Holders renew their leases while they
-- run, so the units of a holder that vanished come back when its lease
-- runs out. `p.period` is the lease.

local CONC = {}

function CONC.load(key, p, now, writes)
  local n
  if writes then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
    n = redis.call('ZCARD', key)
  else
    n = redis.call('ZCOUNT', key, '(' .. int(now), '+inf')
  end
  return { n = n, add = 0 }, n > 0
end

function CONC.earliest(s, p, now, cost)
  if cost > p.limit then return NEVER, 0 end
  if s.n + cost <= p.limit then return AT, now end
  return BUSY, 0
end

function CONC.commit(s, p, t, cost)
  s.n = s.n + cost
  s.add = cost
end

function CONC.remaining(s, p, now)
  return max(p.limit - s.n, 0)
end

-- Held units are never "full again" at a known time.
function CONC.full_at(s, p)
  return -1
end

local function members(lease, cost)
  local m = {}
  for k = 1, cost do m[k] = lease .. ':' .. k end
  return m
end

-- The key lives as long as its newest lease.
local function expire_with_lease(key, p)
  redis.call('PEXPIRE', key, div_ceil(p.period, 1000) + 1)
end

-- ZADD / ZREM with many members, in chunks Lua's unpack can take.
local function each_chunk(m, f)
  for i = 1, #m, 1000 do
    f({ unpack(m, i, math.min(i + 999, #m)) })
  end
end

function CONC.save(key, s, p, now)
  if s.add == 0 then return end
  local expiry = int(now + p.period)
  each_chunk(members(p.lease, s.add), function(chunk)
    local args = {}
    for j = 1, #chunk do
      args[#args + 1] = expiry
      args[#args + 1] = chunk[j]
    end
    redis.call('ZADD', key, unpack(args))
  end)
  expire_with_lease(key, p)
end

function CONC.release(key, p, cost)
  each_chunk(members(p.lease, cost), function(chunk)
    redis.call('ZREM', key, unpack(chunk))
  end)
end

-- Extends a live lease; false when it is gone.
function CONC.renew(key, p, now, cost)
  local first = redis.call('ZSCORE', key, p.lease .. ':1')
  if not first or tonumber(first) <= now then return false end
  local expiry = int(now + p.period)
  each_chunk(members(p.lease, cost), function(chunk)
    local args = { 'XX' }
    for j = 1, #chunk do
      args[#args + 1] = expiry
      args[#args + 1] = chunk[j]
    end
    redis.call('ZADD', key, unpack(args))
  end)
  expire_with_lease(key, p)
  return true
end

ALG[8] = CONC
