-- tower-ratelimit: shared helpers.
--
-- RedisStore does not send one script for everything. For each shape of
-- request (the algorithms of a policy set, in order, and what is asked) it
-- makes a script of this prelude, the file of every algorithm the shape
-- uses, and a body written for the shape (src/store/redis/script.rs; the
-- body's calling convention is in decide.lua). A decision runs only the
-- code it needs. On Redis 7 and later the script is loaded as a function
-- library whose one function is the body: the helpers below are then made
-- once, when the library loads, rather than on every call. (So nothing at
-- the top level may touch `math`, `string` or `redis`: a library's top
-- level cannot.)
--
-- Every algorithm file defines local functions named for its family, with
-- its state as plain values (never a table, but for the sliding log) and
-- its parameters after them:
--   <f>_load(raw, P.., now) -> view, S..           read the state, or
--   <f>_load(key, P.., now, writes) -> view, S..   (log, concurrency)
--   <f>_earliest(S.., P.., now, cost) -> kind, t   the earliest slot
--   <f>_commit(S.., P.., at, cost, holder) -> S..  admit at `at`
--   <f>_save(key, S.., P.., now)                   write, expire at full
-- A family whose state is one value takes it as read (`raw`, false when
-- none): the body reads every such policy's value with one GET or MGET.
-- `view` is what the reply carries back for the crate to decide from: the
-- stored value as read, so both sides compute every answer from the same
-- state.
--
-- Every number is an integer below 2^53 (the crate checks quotas so they
-- stay there), so doubles hold them exactly. States are stored, and
-- parameters passed, as big-endian doubles packed with `struct`: exact for
-- those integers, and read back without parsing decimals. Division is done
-- with `idiv`, which corrects the rounding of `a / b` so the quotient is
-- exact.

-- `math.floor`, looked up on first use: a library's top level cannot.
local floor

local function idiv(a, b)
  if b == 1 then return a end
  floor = floor or math.floor
  local q = floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function div_ceil(a, b)
  if b == 1 then return a end
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

local function max(a, b)
  if a > b then return a end
  return b
end

-- An integer as text for Redis: digits, never an exponent.
local function int(n)
  return string.format('%d', n)
end

-- Milliseconds keys are kept beyond need: none, but a minute when the time
-- is given (tests comparing stores), as the given clock and the one Redis
-- expires keys by drift apart. Every body sets it.
local ttl_slack = 0

-- Milliseconds to keep a key whose state is full again at `full_at`: it
-- expires once its state is back to full, and never before (Redis counts
-- the expiry from its millisecond clock, hence the one added). The quotient
-- is rounded up in doubles, exactly for any wait below 2^50 µs (35 years).
local function ttl_ms(full_at, now)
  local ms = math.ceil((full_at - now) / 1000) + 1
  if ms < 1 then ms = 1 end
  return ms + ttl_slack
end

-- Slot kinds: 0 = at a time, 1 = queue full (retry at a time), 2 = never,
-- 3 = busy (a concurrency policy is full: no time is known).
local AT, QUEUE_FULL, NEVER, BUSY = 0, 1, 2, 3
