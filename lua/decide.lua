-- Decides one request against every policy, all or nothing.
--
-- KEYS[i]: policy i's state for the request's key (all in one hash slot).
-- ARGV[1]: the time in microseconds, or "" for the server's TIME.
-- ARGV[2]: the cost. ARGV[3]: the longest wait in microseconds, or -1 for
-- reject mode. Then six per policy: algorithm id, limit, period (µs),
-- burst, unit, drain.
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
local cost = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local shaping = max_wait >= 0
if max_wait < 0 then max_wait = 0 end

local n = #KEYS
local params, states, existed, kinds, slots = {}, {}, {}, {}, {}
for i = 1, n do
  local b = 3 + (i - 1) * 6
  local p = {
    id = tonumber(ARGV[b + 1]),
    limit = tonumber(ARGV[b + 2]),
    period = tonumber(ARGV[b + 3]),
    burst = tonumber(ARGV[b + 4]),
    unit = tonumber(ARGV[b + 5]),
    drain = tonumber(ARGV[b + 6]),
  }
  p.shapes = p.id == 4
  params[i] = p
  local alg = ALG[p.id]
  if not alg then return redis.error_reply('tower-ratelimit: unknown algorithm id ' .. ARGV[b + 1]) end
  states[i], existed[i] = alg.load(KEYS[i], p, now)
  if cost == 0 then
    kinds[i], slots[i] = AT, now
  else
    kinds[i], slots[i] = alg.earliest(states[i], p, now, cost, shaping)
  end
end

-- The slot for all policies is the latest of theirs.
local at, never, queue_full = now, false, false
for i = 1, n do
  if kinds[i] == NEVER then
    never = true
  else
    if kinds[i] == QUEUE_FULL then queue_full = true end
    at = max(at, slots[i])
  end
end
local allowed = not never and not queue_full and at - now <= max_wait

if allowed and cost > 0 then
  for i = 1, n do
    local alg = ALG[params[i].id]
    alg.commit(states[i], params[i], at, cost)
    alg.save(KEYS[i], states[i], params[i], now)
    existed[i] = true
  end
end

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
