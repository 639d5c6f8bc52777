-- seed: make Redis hold the user as the source of truth has them, unless it
-- already holds them seeded from it (Redis may then be ahead of the source:
-- it is left alone). A hash without a lineage, or whose seeded kinds lost a
-- field, is not the truth (the Redis store never creates balances on its
-- own when it caches a source; such a hash is left by an eviction or an
-- outside change): it is replaced whole, starting a new lineage. Kinds the
-- hash was never seeded with (a kind added to the configuration) are added
-- to the lineage it has. A hash that the user's high-water key (see
-- `common.lua` in the Redis store) calls stale is replaced too; a new
-- lineage sets the high-water key to its own seeding point.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's high-water key.
-- ARGV: the new lineage's id, the source's version, the new lineage's
--       origins ('lineage@version' points), the idle TTL ms, then per kind:
--       name, count, last refill ms.
-- Reply: {lineage, version} as held after the call.

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'l', 'v', 's')
local intact = stored[1] and stored[2]
local seeded = stored[3] or ','
local mark = redis.call('GET', KEYS[2])
if intact and mark then
  local mark_l, mark_v = string.match(mark, '^(%d+) (%d+)$')
  intact = mark_l == stored[1] and tonumber(mark_v) <= tonumber(stored[2])
end
if intact then
  for i = 5, #ARGV, 3 do
    local name = ARGV[i]
    if string.find(seeded, ',' .. name .. ',', 1, true) then
      local values = redis.call('HMGET', key, 'n:' .. name, 'r:' .. name)
      if not values[1] or not values[2] then
        intact = false
      end
    end
  end
end
local fields = {}
if not intact then
  redis.call('DEL', key)
  seeded = ','
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  -- Read from the source just now: checked.
  fields = {'l', ARGV[1], 'v', ARGV[2], 'a', ARGV[3], 'f', now}
  redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[4])
end
for i = 5, #ARGV, 3 do
  local name = ARGV[i]
  if not string.find(seeded, ',' .. name .. ',', 1, true) then
    fields[#fields + 1] = 'n:' .. name
    fields[#fields + 1] = ARGV[i + 1]
    fields[#fields + 1] = 'r:' .. name
    fields[#fields + 1] = ARGV[i + 2]
    seeded = seeded .. name .. ','
  end
end
fields[#fields + 1] = 's'
fields[#fields + 1] = seeded
redis.call('HSET', key, unpack(fields))
local idle_ttl = tonumber(ARGV[4])
if redis.call('PTTL', key) < idle_ttl then
  redis.call('PEXPIRE', key, idle_ttl)
end
local held = redis.call('HMGET', key, 'l', 'v')
return {tonumber(held[1]), tonumber(held[2])}
