-- check: what a read of the source found, told to Redis. Somebody else
-- changed the user when the source holds an edit (a state of no lineage,
-- lineage 0, made straight to the source: the console, another backend)
-- that Redis's state was not seeded from, or no document at all (deleted:
-- the user is new again). Otherwise the state is marked checked as of now:
-- a state of another lineage than Redis's is no edit, and the next write
-- round settles which state goes on (the source takes only a state that
-- descends from what it holds).
--
-- An edit replaces Redis's state. Charges Redis holds that no write carried
-- to the source yet (`u:<kind>`, async mode) apply on top of it (DESIGN.md
-- §4): given the edit, the state is reseeded from it under a new lineage,
-- with those charges taken off (never below zero) and counted pending, so
-- that a round writes them; its origins name the edit, then the state the
-- charges were made on, so that their refunds give back. Otherwise (sync
-- mode, where an unwritten charge is still waiting for its round and is
-- answered as lost; or nothing unwritten) the state is dropped, and the
-- next request loads the source's.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key;
-- KEYS[3] the user's high-water key.
-- ARGV[1] the source's point as 'lineage@version', '' for no document, or
--         'unread' when the source did not answer: the state is marked
--         checked all the same, so that the requests waiting for the check
--         go on, deciding on it (the next check is due in a second).
-- For an edit, async mode: ARGV[2] the new lineage, ARGV[3] the edit's
--         origins ('lineage@version' points), ARGV[4] the idle TTL ms, then
--         per kind: name, count, last refill ms.
-- Reply: {1} dropped, {2} reseeded with unwritten charges on top, {0} kept
--        (or nothing held).

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'l', 'a', 'v')
if not stored[1] then
  return {0}
end
local edited = ARGV[1] == ''
if string.sub(ARGV[1], 1, 2) == '0@' then
  edited = not string.find(' ' .. (stored[2] or '') .. ' ', ' ' .. ARGV[1] .. ' ', 1, true)
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if not edited then
  redis.call('HSET', key, 'f', now)
  return {0}
end

local carried = {}
local any = false
if ARGV[2] then
  for i = 5, #ARGV, 3 do
    local unwritten = tonumber(redis.call('HGET', key, 'u:' .. ARGV[i])) or 0
    carried[#carried + 1] = unwritten
    any = any or unwritten > 0
  end
end
if not any then
  redis.call('DEL', key, KEYS[2], KEYS[3])
  return {1}
end

-- Reseed from the edit, the unwritten charges on top.
local lineage, version = ARGV[2], string.match(ARGV[1], '@(%d+)$')
local origins = ARGV[1] .. ' ' .. stored[1] .. '@' .. (tonumber(stored[3]) + 1)
local kept = 2
for point in string.gmatch(ARGV[3], '%S+') do
  if kept < 8 and point ~= ARGV[1] then
    origins = origins .. ' ' .. point
    kept = kept + 1
  end
end
redis.call('DEL', key)
local fields = {'l', lineage, 'v', version, 'a', origins, 'f', now, 'm', 1}
local seeded = ','
for i = 5, #ARGV, 3 do
  local unwritten = carried[(i - 2) / 3]
  local name = ARGV[i]
  fields[#fields + 1] = 'n:' .. name
  fields[#fields + 1] = math.max(0, tonumber(ARGV[i + 1]) - unwritten)
  fields[#fields + 1] = 'r:' .. name
  fields[#fields + 1] = ARGV[i + 2]
  fields[#fields + 1] = 'u:' .. name
  fields[#fields + 1] = unwritten
  seeded = seeded .. name .. ','
end
fields[#fields + 1] = 's'
fields[#fields + 1] = seeded
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ARGV[4])
redis.call('SET', KEYS[3], lineage .. ' ' .. version, 'PX', ARGV[4])
redis.call('SET', KEYS[2], 1)
return {2}
