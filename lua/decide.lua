-- The body of a decision script. RedisStore writes one for each shape of
-- request (src/store/redis/script.rs); below is the one for a policy set of
-- a GCRA policy and a fixed window, asked to acquire in reject mode. A unit
-- test checks that it is exactly what the generator writes.
--
-- KEYS[i]: policy i's state for the request's key (all in one hash slot).
-- ARGV: the time in microseconds when it is given, else the floor under
-- the server's TIME (the latest time the caller saw from Redis, run on by
-- its own clock, so a clock stepping back holds no key back); every
-- policy's parameters, packed in one argument ('>d' each, in
-- the order its family lists them); then per request, in arrival order:
-- its cost, its longest wait in microseconds (wait mode only) and its lease
-- id (policy sets with a concurrency policy only).
--
-- Returns { now, view_1, .., view_n, flags.. }: view_i is policy i's state
-- as read (before the requests), and the flags say which requests were
-- admitted, 48 to a number, the first request the highest bit of the first
-- number (they stay exact in a double). The crate decides every request from
-- the views, with the algorithms the memory store uses, so both stores
-- answer field for field alike, and checks that it admits what the script
-- admitted.
--
-- Requests are decided one after another, each all or nothing: a request
-- is admitted at the latest of its policies' slots, if none says never,
-- none is full, and that slot is within its wait; then every policy is
-- charged. A batch of requests is exactly those requests decided one by one
-- at the same time. Releases, renewals and resets have bodies of their own.

-- The body for a GCRA policy and a fixed window, acquire, reject mode:
-- Decides the requests in order, each against every policy, all or
-- nothing (lua/decide.lua explains the arguments and the reply).
-- Never before the latest time the caller saw from Redis (and since):
-- a clock that stepped back in a failover holds no key back.
local time = redis.call('TIME')
local now = math.max(time[1] * 1000000 + time[2], tonumber(ARGV[1]))
ttl_slack = 0
local burst1, unit1, drain1, limit2, period2 = struct.unpack('>ddddd', ARGV[2])
local out, fi = { now, false, false, 0 }, 4
local raw = redis.call('MGET', KEYS[1], KEYS[2])
local l1, t1
out[2], l1, t1 = level_load(raw[1], burst1, unit1, drain1, now)
local w2, c2
out[3], w2, c2 = fixed_load(raw[2], limit2, period2, now)
local flags, bits, changed = 0, 0, false
for j = 3, #ARGV do
  local cost = tonumber(ARGV[j])
  local at, ok = now, true
  if cost > 0 then
    local kind, slot
    kind, slot = level_earliest(l1, t1, burst1, unit1, drain1, now, cost)
    if kind == NEVER then ok = false elseif slot > at then at = slot end
    kind, slot = fixed_earliest(w2, c2, limit2, period2, now, cost)
    if kind == NEVER then ok = false elseif slot > at then at = slot end
    if at > now then ok = false end
  end
  flags = flags * 2
  if ok then
    flags = flags + 1
    if cost > 0 then
      l1, t1 = level_commit(l1, t1, burst1, unit1, drain1, at, cost)
      w2, c2 = fixed_commit(w2, c2, limit2, period2, at, cost)
      changed = true
    end
  end
  bits = bits + 1
  if bits == 48 then out[fi] = flags; fi = fi + 1; flags, bits = 0, 0 end
end
if changed then
  level_save(KEYS[1], l1, t1, burst1, unit1, drain1, now)
  fixed_save(KEYS[2], w2, c2, limit2, period2, now)
end
if bits > 0 then out[fi] = flags end
return out
