-- The sliding window log: a request at t fits when the costs logged in
-- (t - period, t] plus its own stay within `limit`. Entries are never
-- logged before the last one (wait-mode reservations queue behind each
-- other), so the list holds at most `limit` units.
--
-- Stored: a list. Index 0 is a header, '>ddddd': the units logged `total`,
-- the number of entries `count`, the times of the `first` and the `last`
-- entry and the last entry's cost. Then one entry per distinct time,
-- oldest first, '>dd': time and cost. Parameters: limit, period.
--
-- No call reads the whole list. A request that fits is decided from the
-- header. Entries are read from the head only as they expire (an acquire
-- that admits drops them, each once) and as a request that does not fit
-- needs them to find its slot: fewer than its cost.
--
-- State: a table. `stored` entries were in the list when read, of which
-- `e` holds the first `read`; `new` holds entries logged by this call;
-- `head` is the position (in stored, then new) of the oldest live entry.
-- The view is the header once expired entries are dropped, then every live
-- stored entry read, as stored: the crate decides from the same entries.

local function log_entry(s, pos)
  if pos > s.stored then return s.new[pos - s.stored] end
  -- The last stored entry, once this call has added to it.
  if pos == s.stored and s.merged then return s.merged end
  if pos > s.read then
    local to = pos
    if s.read + s.chunk > to then to = s.read + s.chunk end
    if to > s.stored then to = s.stored end
    s.chunk = s.chunk * 2
    local raw = redis.call('LRANGE', s.key, s.read + 1, to)
    for i = 1, #raw do
      local at = s.read + i
      local time, cost = struct.unpack('>dd', raw[i])
      s.e[at] = { time, cost }
      if s.view and at >= s.view_from then s.view[#s.view + 1] = raw[i] end
    end
    s.read = to
  end
  return s.e[pos]
end

-- Drops (here, not yet in Redis) the entries expired at `t`.
local function log_expire(s, period, t)
  if s.count == 0 then return end
  if s.last + period <= t then
    s.head = s.stored + #s.new + 1
    s.total, s.count, s.first, s.last, s.last_cost = 0, 0, 0, 0, 0
    return
  end
  while s.first + period <= t do
    local e = log_entry(s, s.head)
    s.total = s.total - e[2]
    s.count = s.count - 1
    s.head = s.head + 1
    s.first = log_entry(s, s.head)[1]
  end
end

local function log_load(key, limit, period, now)
  local s = { key = key, e = {}, read = 0, stored = 0, chunk = 4, head = 1, new = {}, view = false }
  local raw = redis.call('LINDEX', key, 0)
  if raw then
    s.total, s.stored, s.first, s.last, s.last_cost = struct.unpack('>ddddd', raw)
  else
    s.total, s.first, s.last, s.last_cost = 0, 0, 0, 0
  end
  s.count = s.stored
  -- What expired by the earliest time anyone could be admitted counts for
  -- nobody any more.
  log_expire(s, period, max(now, s.last))
  if s.count > 0 then
    s.view = { s.total, s.count, s.first, s.last, s.last_cost }
    s.view_from = s.head
    for at = s.head, s.read do s.view[#s.view + 1] = struct.pack('>dd', s.e[at][1], s.e[at][2]) end
  end
  return s.view, s
end

local function log_earliest(s, limit, period, now, cost)
  if cost > limit then return NEVER, 0 end
  local t0 = max(now, s.last)
  local used = s.total
  if used + cost <= limit then return AT, t0 end
  -- Wait for the oldest live entries to expire, as many as it takes.
  local pos = s.head
  while true do
    local e = log_entry(s, pos)
    used = used - e[2]
    if used + cost <= limit then return AT, max(t0, e[1] + period) end
    pos = pos + 1
  end
end

local function log_commit(s, limit, period, at, cost)
  log_expire(s, period, at)
  if s.count > 0 and s.last == at then
    s.last_cost = s.last_cost + cost
    if #s.new > 0 then
      s.new[#s.new][2] = s.last_cost
    else
      s.merged = { at, s.last_cost }
    end
  else
    if s.count == 0 then s.first = at end
    s.new[#s.new + 1] = { at, cost }
    s.count = s.count + 1
    s.last, s.last_cost = at, cost
  end
  s.total = s.total + cost
  return s
end

local function log_save(key, s, limit, period, now)
  local drop = s.head - 1
  if drop > s.stored then drop = s.stored end
  local header = struct.pack('>ddddd', s.total, s.count, s.first, s.last, s.last_cost)
  local tail = {}
  local from = s.head - s.stored
  if from < 1 then from = 1 end
  for i = from, #s.new do tail[#tail + 1] = struct.pack('>dd', s.new[i][1], s.new[i][2]) end
  if drop == s.stored then
    -- Nothing stored is live: write the log anew.
    if s.stored > 0 then redis.call('DEL', key) end
    redis.call('RPUSH', key, header, unpack(tail))
  else
    -- Index `drop` holds the last expired entry: the new header goes there.
    if drop > 0 then redis.call('LTRIM', key, drop, -1) end
    redis.call('LSET', key, 0, header)
    if s.merged then redis.call('LSET', key, -1, struct.pack('>dd', s.merged[1], s.merged[2])) end
    if #tail > 0 then redis.call('RPUSH', key, unpack(tail)) end
  end
  redis.call('PEXPIRE', key, ttl_ms(s.last + period, now))
end
