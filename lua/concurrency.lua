-- Concurrency: at most `limit` units in flight. Stored: a sorted set of
-- leases scored by when they run out (µs); a holder of cost c has the c
-- members "<lease>:1" .. "<lease>:c". Holders renew their leases while they
-- run, so the units of a holder that vanished come back when its lease
-- runs out. Parameters: limit, lease (µs).
--
-- State: the units held `n`, and the holders admitted by this call
-- (`adds`: lease id, cost, ...). The view is `n`.

local function conc_load(key, limit, lease, now, writes)
  local n
  if writes then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
    n = redis.call('ZCARD', key)
  else
    n = redis.call('ZCOUNT', key, '(' .. int(now), '+inf')
  end
  return n, n, false
end

local function conc_earliest(n, adds, limit, lease, now, cost)
  if cost > limit then return NEVER, 0 end
  if n + cost <= limit then return AT, now end
  return BUSY, 0
end

local function conc_commit(n, adds, limit, lease, at, cost, holder)
  if not adds then adds = {} end
  adds[#adds + 1] = holder
  adds[#adds + 1] = cost
  return n + cost, adds
end

-- ZADD / ZREM with `cost` members of `holder` in chunks Lua's unpack can
-- take.
local function conc_each(holder, cost, f)
  for first = 1, cost, 1000 do
    local last = math.min(first + 999, cost)
    local m = {}
    for k = first, last do m[#m + 1] = holder .. ':' .. k end
    f(m)
  end
end

-- The key lives as long as its newest lease.
local function conc_expire(key, lease)
  redis.call('PEXPIRE', key, div_ceil(lease, 1000) + 1 + ttl_slack)
end

-- ZADD of the members `m`, all scored `expiry`, after the options `args`.
local function conc_zadd(key, args, expiry, m)
  for j = 1, #m do
    args[#args + 1] = expiry
    args[#args + 1] = m[j]
  end
  redis.call('ZADD', key, unpack(args))
end

local function conc_save(key, n, adds, limit, lease, now)
  local expiry = int(now + lease)
  for i = 1, #adds, 2 do
    conc_each(adds[i], adds[i + 1], function(m) conc_zadd(key, {}, expiry, m) end)
  end
  conc_expire(key, lease)
end

local function conc_release(key, limit, lease, holder, cost)
  conc_each(holder, cost, function(m)
    redis.call('ZREM', key, unpack(m))
  end)
end

-- Extends a live lease; false when it is gone.
local function conc_renew(key, limit, lease, now, holder, cost)
  local first = redis.call('ZSCORE', key, holder .. ':1')
  if not first or tonumber(first) <= now then return false end
  local expiry = int(now + lease)
  conc_each(holder, cost, function(m) conc_zadd(key, { 'XX' }, expiry, m) end)
  conc_expire(key, lease)
  return true
end
