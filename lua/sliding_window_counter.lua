-- The sliding window counter: counts per fixed window; a request at t fits
-- when prev * (1 - elapsed/period) + curr + cost <= limit. The weight is
-- measured in steps of max(1, ceil(period / 2^20)) microseconds, rounding
-- toward counting more of the previous window. State: the latest window
-- `w` with admissions, its count `c`, the window before's `p`, and the time
-- of the latest admission `t`.

local COUNTER = {}

local function steps(period)
  local step = div_ceil(period, 1048576)
  if step < 1 then step = 1 end
  return step, div_ceil(period, step)
end

function COUNTER.load(key, p, now)
  local v = redis.call('HMGET', key, 'w', 'c', 'p', 't')
  if not v[1] then return { w = idiv(now, p.period), c = 0, p = 0, t = 0 }, false end
  return { w = tonumber(v[1]), c = tonumber(v[2]), p = tonumber(v[3]), t = tonumber(v[4]) }, true
end

-- (previous, current) counts as seen from window w.
local function counts(s, w)
  if w == s.w then return s.p, s.c end
  if w == s.w + 1 then return s.c, 0 end
  return 0, 0
end

function COUNTER.earliest(s, p, now, cost)
  if cost > p.limit then return NEVER, 0 end
  local step, n = steps(p.period)
  local from = max(now, s.t)
  for _ = 1, 3 do
    local w = idiv(from, p.period)
    local start = w * p.period
    local prev, curr = counts(s, w)
    if curr + cost <= p.limit then
      local room = p.limit - curr - cost
      local t = from
      if prev > room then
        local k = n - idiv(room * n, prev)
        t = max(from, start + k * step)
      end
      if t < start + p.period then return AT, t end
    end
    from = start + p.period
  end
  return AT, from
end

function COUNTER.commit(s, p, t, cost)
  local w = idiv(t, p.period)
  local prev, curr = counts(s, w)
  s.w = max(w, s.w)
  s.c = curr + cost
  s.p = prev
  s.t = max(s.t, t)
end

function COUNTER.remaining(s, p, now)
  if s.t > now then return 0 end
  local step, n = steps(p.period)
  local w = idiv(now, p.period)
  local prev, curr = counts(s, w)
  local k = idiv(now - w * p.period, step)
  local weighted = div_ceil(prev * (n - k), n)
  return max(p.limit - curr - weighted, 0)
end

function COUNTER.full_at(s, p)
  return (s.w + 2) * p.period
end

function COUNTER.save(key, s, p, now)
  redis.call('HSET', key, 'w', int(s.w), 'c', int(s.c), 'p', int(s.p), 't', int(s.t))
  expire_at_full(key, COUNTER.full_at(s, p), now)
end

ALG[7] = COUNTER
