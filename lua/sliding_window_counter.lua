-- The sliding window counter: counts per fixed window; a request at t fits
-- when prev * (1 - elapsed/period) + curr + cost <= limit. The weight is
-- measured in `n` steps of `step` microseconds (step = max(1, ceil(period /
-- 2^20)), n = ceil(period / step), computed by the crate), rounding toward
-- counting more of the previous window. State: the latest window `w` with
-- admissions, its count `c`, the window before's `prev`, and the time of
-- the latest admission `tail`.
--
-- Stored: '>dddd' (w, c, prev, tail). Parameters: limit, period, step, n.

local function counter_load(raw, limit, period, step, n, now)
  if not raw then return false, idiv(now, period), 0, 0, 0 end
  local w, c, prev, tail = struct.unpack('>dddd', raw)
  return raw, w, c, prev, tail
end

-- (previous, current) counts as seen from window `at_w`.
local function counter_counts(w, c, prev, at_w)
  if at_w == w then return prev, c end
  if at_w == w + 1 then return c, 0 end
  return 0, 0
end

local function counter_earliest(w, c, prev, tail, limit, period, step, n, now, cost)
  if cost > limit then return NEVER, 0 end
  local from = max(now, tail)
  -- At most three windows: by the third both counts are zero.
  for _ = 1, 3 do
    local at_w = idiv(from, period)
    local start = at_w * period
    local before, curr = counter_counts(w, c, prev, at_w)
    if curr + cost <= limit then
      local room = limit - curr - cost
      local t = from
      if before > room then
        -- before * (n - k) <= room * n  <=>  k >= n - floor(room * n / before)
        local k = n - idiv(room * n, before)
        t = max(from, start + k * step)
      end
      if t < start + period then return AT, t end
    end
    from = start + period
  end
  return AT, from
end

local function counter_commit(w, c, prev, tail, limit, period, step, n, at, cost)
  local at_w = idiv(at, period)
  local before, curr = counter_counts(w, c, prev, at_w)
  return max(at_w, w), curr + cost, before, max(tail, at)
end

local function counter_save(key, w, c, prev, tail, limit, period, step, n, now)
  redis.call('SET', key, struct.pack('>dddd', w, c, prev, tail), 'PX', ttl_ms((w + 2) * period, now))
end
