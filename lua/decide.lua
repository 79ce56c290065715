-- Decides one request against every policy, all or nothing.
--
-- KEYS[i]: policy i's state for the request's key (all in one hash slot).
-- ARGV[1]: the time in microseconds, or "" for the server's TIME.
-- ARGV[2]: what is asked: a = acquire, p = peek (decide, write nothing),
-- r = release the lease's units, n = renew the lease, x = reset the key.
-- ARGV[3]: the cost. ARGV[4]: the longest wait in microseconds, or -1 for
-- reject mode. ARGV[5]: the lease id concurrency policies hold units
-- under. Then six per policy: algorithm id, limit, period (µs), burst,
-- unit, drain.
--
-- Returns { now, allowed (1/0), slot time (-1 for never), then per policy:
-- slot kind, slot time, remaining, full_at (-1 when it holds no state) }.

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local op = ARGV[2]
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local shaping = max_wait >= 0
if max_wait < 0 then max_wait = 0 end

local n = #KEYS
local params = {}
for i = 1, n do
  local b = 5 + (i - 1) * 6
  local p = {
    id = tonumber(ARGV[b + 1]),
    limit = tonumber(ARGV[b + 2]),
    period = tonumber(ARGV[b + 3]),
    burst = tonumber(ARGV[b + 4]),
    unit = tonumber(ARGV[b + 5]),
    drain = tonumber(ARGV[b + 6]),
  }
  p.shapes = p.id == 4
  p.lease = ARGV[5]
  if not ALG[p.id] then return redis.error_reply('tower-ratelimit: unknown algorithm id ' .. ARGV[b + 1]) end
  params[i] = p
end

-- Releases, renewals and resets change what they name, then answer as a
-- check of cost 0 would.
local renewed = true
if op == 'x' then
  for i = 1, n do redis.call('DEL', KEYS[i]) end
elseif op == 'r' or op == 'n' then
  for i = 1, n do
    local alg = ALG[params[i].id]
    if op == 'r' and alg.release then alg.release(KEYS[i], params[i], cost) end
    if op == 'n' and alg.renew then
      renewed = alg.renew(KEYS[i], params[i], now, cost) and renewed
    end
  end
end
local writes = op == 'a'
if op ~= 'a' and op ~= 'p' then cost = 0 end

local states, existed, kinds, slots = {}, {}, {}, {}
for i = 1, n do
  local p = params[i]
  local alg = ALG[p.id]
  states[i], existed[i] = alg.load(KEYS[i], p, now, writes)
  if cost == 0 then
    kinds[i], slots[i] = AT, now
  else
    kinds[i], slots[i] = alg.earliest(states[i], p, now, cost, shaping)
  end
end

-- The slot for all policies is the latest of theirs.
local at, never, blocked = now, false, false
for i = 1, n do
  if kinds[i] == NEVER then
    never = true
  else
    if kinds[i] == QUEUE_FULL or kinds[i] == BUSY then blocked = true end
    if kinds[i] ~= BUSY then at = max(at, slots[i]) end
  end
end
local allowed = not never and not blocked and at - now <= max_wait

if writes and allowed and cost > 0 then
  for i = 1, n do
    local alg = ALG[params[i].id]
    alg.commit(states[i], params[i], at, cost)
    alg.save(KEYS[i], states[i], params[i], now)
    existed[i] = true
  end
end
if not renewed then allowed = false end

local out = { now, allowed and 1 or 0, never and -1 or at }
for i = 1, n do
  local alg, p = ALG[params[i].id], params[i]
  out[#out + 1] = kinds[i]
  out[#out + 1] = slots[i]
  if existed[i] then
    out[#out + 1] = alg.remaining(states[i], p, now)
    out[#out + 1] = alg.full_at(states[i], p)
  else
    out[#out + 1] = p.burst
    out[#out + 1] = -1
  end
end
return out
