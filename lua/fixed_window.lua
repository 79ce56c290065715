-- The fixed window: at most `limit` per window [w*period, (w+1)*period).
-- State: the latest window `w` holding admissions (ahead of now after a
-- wait-mode reservation) and its count `c`.
--
-- Stored: '>dd' (w, c). Parameters: limit, period.

local function fixed_load(raw, limit, period, now)
  if not raw then return false, idiv(now, period), 0 end
  local w, c = struct.unpack('>dd', raw)
  return raw, w, c
end

local function fixed_earliest(w, c, limit, period, now, cost)
  if cost > limit then return NEVER, 0 end
  local current = idiv(now, period)
  local t0, at_w = now, current
  if w > current then t0, at_w = w * period, w end
  local count = 0
  if at_w == w then count = c end
  if count + cost <= limit then return AT, t0 end
  return AT, (at_w + 1) * period
end

local function fixed_commit(w, c, limit, period, at, cost)
  local at_w = idiv(at, period)
  if at_w == w then return w, c + cost end
  return at_w, cost
end

local function fixed_save(key, w, c, limit, period, now)
  redis.call('SET', key, struct.pack('>dd', w, c), 'PX', ttl_ms((w + 1) * period, now))
end
