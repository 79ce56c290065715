-- The leaky bucket: GCRA's level (gcra.lua) as a meter in reject mode. In
-- wait mode it shapes: each request leaves when the requests ahead have
-- drained, and one finding `burst` units queued is refused.

local function leaky_earliest(l, t, burst, unit, drain, now, cost)
  if cost > burst then return NEVER, 0 end
  local t0 = now
  if t > t0 then t0 = t end
  -- Slots are whole microseconds, so one queued unit takes
  -- ceil(period / limit) of them; the queue holds `burst` units.
  local slot = t0 + div_ceil(level_at(l, t, drain, t0), drain)
  local room = (burst - cost) * div_ceil(unit, drain)
  if slot - now > room then return QUEUE_FULL, slot - room end
  return AT, slot
end
