-- seed: record balances read from Firestore for the kinds Redis does not
-- hold from Firestore yet, never touching a seeded kind (its balance may be
-- newer than Firestore's). A hash without a version holds nothing seeded:
-- the Redis store made it on its own after a flush or an expiry, from a
-- balance that is not the truth, so it is replaced. A kind outside the
-- seeded list is replaced for the same reason.
--
-- A hash seeded afresh starts a new lineage of snapshots: its version jumps
-- LINEAGE_GAP past Firestore's, so that a write still in flight from the
-- lost lineage (numbered just past Firestore's version) can never pass for a
-- newer state than the new lineage's.
--
-- KEYS[1] the user's balances hash.
-- ARGV: the stored version, the idle TTL ms, then per kind: name, count,
--       last refill ms.
-- Reply: {version} as stored.

local LINEAGE_GAP = 1048576

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'v', 's')
local seeded_list = stored[2] or ','
local version = ARGV[1]
if stored[1] then
  if tonumber(stored[1]) >= tonumber(version) then
    version = stored[1]
  end
else
  redis.call('DEL', key)
  seeded_list = ','
  version = string.format('%d', tonumber(version) + LINEAGE_GAP)
end
local fields = {}
for i = 3, #ARGV, 3 do
  local name = ARGV[i]
  if not string.find(seeded_list, ',' .. name .. ',', 1, true) then
    fields[#fields + 1] = 'n:' .. name
    fields[#fields + 1] = ARGV[i + 1]
    fields[#fields + 1] = 'r:' .. name
    fields[#fields + 1] = ARGV[i + 2]
    seeded_list = seeded_list .. name .. ','
  end
end
fields[#fields + 1] = 'v'
fields[#fields + 1] = version
fields[#fields + 1] = 's'
fields[#fields + 1] = seeded_list
redis.call('HSET', key, unpack(fields))
local idle_ttl = tonumber(ARGV[2])
if redis.call('PTTL', key) < idle_ttl then
  redis.call('PEXPIRE', key, idle_ttl)
end
return {tonumber(version)}
