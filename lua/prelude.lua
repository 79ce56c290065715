-- tower-ratelimit: shared helpers. The files in lua/ are joined into one
-- script: prelude.lua, one file per algorithm, then decide.lua.
--
-- Every number is an integer below 2^53 (the crate checks quotas so they
-- stay there), so doubles hold them exactly. Division is done with `idiv`,
-- which corrects the rounding of `a / b` so the quotient is exact.

local ALG = {}

local function idiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function div_ceil(a, b)
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

local function max(a, b)
  if a > b then return a end
  return b
end

-- An integer as Redis should store it: digits, never an exponent.
local function int(n)
  return string.format('%d', n)
end

-- Expire the key once its state is back to full, and never before.
local function expire_at_full(key, full_at, now)
  local ms = div_ceil(full_at - now, 1000) + 1
  if ms < 1 then ms = 1 end
  redis.call('PEXPIRE', key, ms)
end

-- Slot kinds: 0 = at a time, 1 = queue full (retry at a time), 2 = never,
-- 3 = busy (a concurrency policy is full: no time is known).
local AT, QUEUE_FULL, NEVER, BUSY = 0, 1, 2, 3
