-- GCRA in its continuous-state form: the level `l` (in ticks) at time `t`.
-- One unit is `unit` ticks; the bucket holds `burst * unit` ticks and drains
-- `drain` ticks per microsecond. Also serves the greedy token bucket, and
-- the leaky bucket, which adds shaping in wait mode.

local LEVEL = {}

function LEVEL.load(key, p, now)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return { l = 0, t = now }, false end
  return { l = tonumber(v[1]), t = tonumber(v[2]) }, true
end

local function level_at(s, p, t)
  local elapsed = t - s.t
  if elapsed < 0 then elapsed = 0 end
  if elapsed >= div_ceil(s.l, p.drain) then return 0 end
  return s.l - elapsed * p.drain
end

function LEVEL.earliest(s, p, now, cost, shaping)
  if cost > p.burst then return NEVER, 0 end
  local capacity = p.burst * p.unit
  local need = cost * p.unit
  local t0 = max(now, s.t)
  local l = level_at(s, p, t0)
  if shaping and p.shapes then
    -- Slots are whole microseconds, so one queued unit takes
    -- ceil(period / limit) of them; the queue holds `burst` units.
    local slot = t0 + div_ceil(l, p.drain)
    local room = (p.burst - cost) * div_ceil(p.unit, p.drain)
    if slot - now > room then return QUEUE_FULL, slot - room end
    return AT, slot
  end
  local excess = l + need - capacity
  if excess <= 0 then return AT, t0 end
  return AT, t0 + div_ceil(excess, p.drain)
end

function LEVEL.commit(s, p, t, cost)
  s.l = level_at(s, p, t) + cost * p.unit
  s.t = max(s.t, t)
end

function LEVEL.remaining(s, p, now)
  if s.t > now then return 0 end
  local left = p.burst * p.unit - level_at(s, p, now)
  if left < 0 then return 0 end
  return idiv(left, p.unit)
end

function LEVEL.full_at(s, p)
  return s.t + div_ceil(s.l, p.drain)
end

function LEVEL.save(key, s, p, now)
  redis.call('HSET', key, 'l', int(s.l), 't', int(s.t))
  expire_at_full(key, LEVEL.full_at(s, p), now)
end

ALG[1] = LEVEL
