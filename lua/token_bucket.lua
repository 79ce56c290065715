-- The token bucket refilled in steps: `limit` tokens every `period`, up to
-- `burst`. State: tokens `k` (below zero for wait-mode reservations) at the
-- last refill boundary `a`. A full bucket does not tick: its refill clock
-- restarts when it is first drawn from.

local BUCKET = {}

function BUCKET.load(key, p, now)
  local v = redis.call('HMGET', key, 'k', 'a')
  if not v[1] then return { k = p.burst, a = now }, false end
  return { k = tonumber(v[1]), a = tonumber(v[2]) }, true
end

-- The bucket at `t`, refills due by then added.
local function bucket_at(s, p, t)
  if t < s.a then return { k = s.k, a = s.a } end
  local steps = idiv(t - s.a, p.period)
  local missing = p.burst - s.k
  if missing < 0 then missing = 0 end
  if steps >= div_ceil(missing, p.limit) then return { k = p.burst, a = t } end
  return { k = s.k + steps * p.limit, a = s.a + steps * p.period }
end

function BUCKET.earliest(s, p, now, cost)
  if cost > p.burst then return NEVER, 0 end
  local t0 = max(now, s.a)
  local b = bucket_at(s, p, t0)
  local short = cost - b.k
  if short <= 0 then return AT, t0 end
  return AT, b.a + div_ceil(short, p.limit) * p.period
end

function BUCKET.commit(s, p, t, cost)
  local b = bucket_at(s, p, max(t, s.a))
  s.k = b.k - cost
  s.a = b.a
end

function BUCKET.remaining(s, p, now)
  if s.a > now then return 0 end
  local k = bucket_at(s, p, now).k
  if k < 0 then return 0 end
  return k
end

function BUCKET.full_at(s, p)
  local missing = p.burst - s.k
  if missing < 0 then missing = 0 end
  return s.a + div_ceil(missing, p.limit) * p.period
end

function BUCKET.save(key, s, p, now)
  redis.call('HSET', key, 'k', int(s.k), 'a', int(s.a))
  expire_at_full(key, BUCKET.full_at(s, p), now)
end

ALG[2] = BUCKET
