-- GCRA in its continuous-state form: the level `l` (in ticks) at time `t`.
-- One unit is `unit` ticks; the bucket holds `burst * unit` ticks and drains
-- `drain` ticks per microsecond. Also serves the greedy token bucket, and
-- the leaky bucket (which shapes in wait mode: leaky_bucket.lua).
--
-- Stored: '>dd' (l, t). Parameters: burst, unit, drain.

local function level_load(raw, burst, unit, drain, now)
  if not raw then return false, 0, now end
  local l, t = struct.unpack('>dd', raw)
  return raw, l, t
end

-- The level at `at`; before `t` (a reservation ahead, or a clock that
-- stepped back) nothing has drained yet.
local function level_at(l, t, drain, at)
  local elapsed = at - t
  if elapsed <= 0 then return l end
  -- elapsed >= ceil(l / drain), without dividing
  if elapsed * drain >= l then return 0 end
  return l - elapsed * drain
end

local function level_earliest(l, t, burst, unit, drain, now, cost)
  if cost > burst then return NEVER, 0 end
  -- Nobody goes ahead of a reservation already made.
  local t0 = now
  if t > t0 then t0 = t end
  local excess = level_at(l, t, drain, t0) + (cost - burst) * unit
  if excess <= 0 then return AT, t0 end
  return AT, t0 + div_ceil(excess, drain)
end

local function level_commit(l, t, burst, unit, drain, at, cost)
  l = level_at(l, t, drain, at) + cost * unit
  if at > t then t = at end
  return l, t
end

local function level_save(key, l, t, burst, unit, drain, now)
  local full_at = t + div_ceil(l, drain)
  redis.call('SET', key, struct.pack('>dd', l, t), 'PX', ttl_ms(full_at, now))
end
