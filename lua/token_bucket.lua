-- The token bucket refilled in steps: `limit` tokens every `period`, up to
-- `burst`. State: tokens `k` (below zero for wait-mode reservations) at the
-- last refill boundary `a`. A full bucket does not tick: its refill clock
-- restarts when it is first drawn from.
--
-- Stored: '>dd' (k, a). Parameters: limit, period, burst.

local function bucket_load(raw, limit, period, burst, now)
  if not raw then return false, burst, now end
  local k, a = struct.unpack('>dd', raw)
  return raw, k, a
end

-- The bucket at `t`, refills due by then added.
local function bucket_at(k, a, limit, period, burst, t)
  if t < a then return k, a end
  local steps = idiv(t - a, period)
  local missing = burst - k
  if missing < 0 then missing = 0 end
  if steps >= div_ceil(missing, limit) then return burst, t end
  return k + steps * limit, a + steps * period
end

local function bucket_earliest(k, a, limit, period, burst, now, cost)
  if cost > burst then return NEVER, 0 end
  local t0 = max(now, a)
  local bk, ba = bucket_at(k, a, limit, period, burst, t0)
  local short = cost - bk
  if short <= 0 then return AT, t0 end
  return AT, ba + div_ceil(short, limit) * period
end

local function bucket_commit(k, a, limit, period, burst, at, cost)
  local bk, ba = bucket_at(k, a, limit, period, burst, max(at, a))
  return bk - cost, ba
end

local function bucket_save(key, k, a, limit, period, burst, now)
  local missing = burst - k
  if missing < 0 then missing = 0 end
  local full_at = a + div_ceil(missing, limit) * period
  redis.call('SET', key, struct.pack('>dd', k, a), 'PX', ttl_ms(full_at, now))
end
