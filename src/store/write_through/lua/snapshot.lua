-- snapshot: the user's state for a write round, under the next version of
-- its lineage, and the round's lease on the user.
--
-- One round per user runs at a time across every app instance (the lease,
-- `k` = until when, held by the round of version `kv`), and rounds start at
-- most once per write interval (`q` = not before), so one user's document
-- is written at the pace Firestore sustains however many instances serve
-- them. A round that finds either answers BUSY with both waits: the lease's
-- end is only a bound (the round holding it usually ends much sooner), so
-- the caller asks again before it.
--
-- Versions are drawn, not counted: each state's version is the last one
-- plus 1 plus a random step (from Rust), so that a Redis state rolled back
-- to an old dump (whose later versions the source may hold) cannot take
-- the very versions its lost future took. The hash remembers the last few
-- versions it took (`h`): a state the source holds of this lineage came
-- from this Redis history only if its version is among them.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's high-water key (a
-- hash it calls stale is dropped: lost).
-- ARGV: the lease ms, the write interval ms, the random step, then the
--       source's kind names.
-- Reply: {0} lost (nothing seeded: nothing to write); {1} a kind was never
--        seeded (read it from the source first); {3, pace wait ms, lease
--        wait ms} busy; else
--        {2, lineage, version, pending marks, origin count, then per origin:
--        lineage, version, then per kind: count, last refill ms}.

local REMEMBERED_VERSIONS = 8

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'l', 'v', 's', 'a', 'k', 'q', 'm', 'h')
if not stored[1] or not stored[2] then
  return {0}
end
local mark = redis.call('GET', KEYS[2])
if mark then
  local mark_l, mark_v = string.match(mark, '^(%d+) (%d+)$')
  if mark_l ~= stored[1] or tonumber(mark_v) > tonumber(stored[2]) then
    redis.call('DEL', key)
    return {0}
  end
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_wait = math.max(0, (tonumber(stored[5]) or 0) - now)
local pace_wait = math.max(0, (tonumber(stored[6]) or 0) - now)
if lease_wait > 0 or pace_wait > 0 then
  return {3, pace_wait, lease_wait}
end
local seeded = stored[3] or ','
local balances = {}
-- The unwritten charges this state holds: the write, if it lands, carries
-- them (settle.lua).
local carried = ''
for i = 4, #ARGV do
  local name = ARGV[i]
  if not string.find(seeded, ',' .. name .. ',', 1, true) then
    return {1}
  end
  local values = redis.call('HMGET', key, 'n:' .. name, 'r:' .. name, 'u:' .. name)
  if tonumber(values[3]) then
    carried = carried .. name .. '=' .. values[3] .. ' '
  end
  local count, refill = tonumber(values[1]), tonumber(values[2])
  if not count or not refill then
    -- Partly lost: not the truth any more.
    redis.call('DEL', key)
    return {0}
  end
  balances[#balances + 1] = count
  balances[#balances + 1] = refill
end
local version = redis.call('HINCRBY', key, 'v', 1 + tonumber(ARGV[3]))
local taken = version .. ' '
local kept = 1
for previous in string.gmatch(stored[8] or '', '%d+') do
  if kept < REMEMBERED_VERSIONS then
    taken = taken .. previous .. ' '
    kept = kept + 1
  end
end
redis.call('HSET', key, 'k', now + tonumber(ARGV[1]), 'kv', version,
  'q', now + tonumber(ARGV[2]), 'h', taken, 'ut', carried)
local reply = {2, tonumber(stored[1]), version, tonumber(stored[7]) or 0, 0}
for origin_l, origin_v in string.gmatch(stored[4] or '', '(%d+)@(%d+)') do
  reply[#reply + 1] = tonumber(origin_l)
  reply[#reply + 1] = tonumber(origin_v)
  reply[5] = reply[5] + 1
end
for _, value in ipairs(balances) do
  reply[#reply + 1] = value
end
return reply
