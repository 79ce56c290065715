-- The sliding window log: a list of "time,cost" entries, oldest first, one
-- per distinct time. A request at t fits when the costs logged in
-- (t - period, t] plus its own stay within `limit`. Entries are never
-- logged before the last one, so the list holds at most `limit` units.

local LOG = {}

function LOG.load(key, p, now)
  local raw = redis.call('LRANGE', key, 0, -1)
  local entries = {}
  for i = 1, #raw do
    local comma = string.find(raw[i], ',', 1, true)
    entries[i] = { tonumber(string.sub(raw[i], 1, comma - 1)), tonumber(string.sub(raw[i], comma + 1)) }
  end
  return { e = entries, dropped = 0, changed = false }, #raw > 0
end

local function last_time(s)
  local n = #s.e
  if n == 0 then return 0 end
  return s.e[n][1]
end

-- Costs still counted at t, and the index of the oldest counted entry.
local function live(s, p, t)
  local used, first = 0, nil
  for i = 1, #s.e do
    if s.e[i][1] + p.period > t then
      used = used + s.e[i][2]
      if not first then first = i end
    end
  end
  return used, first
end

function LOG.earliest(s, p, now, cost)
  if cost > p.limit then return NEVER, 0 end
  local t0 = max(now, last_time(s))
  local used, first = live(s, p, t0)
  if used + cost <= p.limit then return AT, t0 end
  for i = first, #s.e do
    local e = s.e[i]
    if e[1] + p.period > t0 then
      used = used - e[2]
      if used + cost <= p.limit then return AT, max(t0, e[1] + p.period) end
    end
  end
  return AT, max(t0, last_time(s) + p.period)
end

function LOG.commit(s, p, t, cost)
  local kept = {}
  for i = 1, #s.e do
    if s.e[i][1] + p.period > t then
      kept[#kept + 1] = s.e[i]
    else
      s.dropped = s.dropped + 1
    end
  end
  local n = #kept
  if n > 0 and kept[n][1] == t then
    kept[n] = { t, kept[n][2] + cost }
    s.merged = true
  else
    kept[n + 1] = { t, cost }
    s.merged = false
  end
  s.e = kept
end

function LOG.remaining(s, p, now)
  if last_time(s) > now then return 0 end
  local used = live(s, p, now)
  return max(p.limit - used, 0)
end

function LOG.full_at(s, p)
  local n = #s.e
  if n == 0 then return 0 end
  return s.e[n][1] + p.period
end

function LOG.save(key, s, p, now)
  -- Drop what expired from the head; then rewrite or append the tail.
  if s.dropped > 0 then redis.call('LTRIM', key, s.dropped, -1) end
  local last = s.e[#s.e]
  local item = int(last[1]) .. ',' .. int(last[2])
  if s.merged then
    redis.call('LSET', key, -1, item)
  else
    redis.call('RPUSH', key, item)
  end
  expire_at_full(key, LOG.full_at(s, p), now)
end

ALG[6] = LOG
