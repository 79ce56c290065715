-- The fixed window: at most `limit` per window [w*period, (w+1)*period).
-- State: the latest window `w` holding admissions (ahead of now after a
-- wait-mode reservation) and its count `c`.

local FIXED = {}

function FIXED.load(key, p, now)
  local v = redis.call('HMGET', key, 'w', 'c')
  if not v[1] then return { w = idiv(now, p.period), c = 0 }, false end
  return { w = tonumber(v[1]), c = tonumber(v[2]) }, true
end

function FIXED.earliest(s, p, now, cost)
  if cost > p.limit then return NEVER, 0 end
  local current = idiv(now, p.period)
  local t0, w = now, current
  if s.w > current then t0, w = s.w * p.period, s.w end
  local count = 0
  if w == s.w then count = s.c end
  if count + cost <= p.limit then return AT, t0 end
  return AT, (w + 1) * p.period
end

function FIXED.commit(s, p, t, cost)
  local w = idiv(t, p.period)
  if w == s.w then
    s.c = s.c + cost
  else
    s.w, s.c = w, cost
  end
end

function FIXED.remaining(s, p, now)
  local current = idiv(now, p.period)
  if s.w > current then return 0 end
  if s.w == current then return max(p.limit - s.c, 0) end
  return p.limit
end

function FIXED.full_at(s, p)
  return (s.w + 1) * p.period
end

function FIXED.save(key, s, p, now)
  redis.call('HSET', key, 'w', int(s.w), 'c', int(s.c))
  expire_at_full(key, FIXED.full_at(s, p), now)
end

ALG[5] = FIXED
