-- check: whether the user's balances of some kinds were seeded from
-- Firestore, and what Redis holds for them.
--
-- KEYS[1] the user's balances hash (the Redis store's).
-- ARGV: kind names.
-- Reply: {seeded, then per kind: count, last refill ms}, seeded 1 when the
--        hash has a version and every kind is in its seeded list, else 0;
--        -1 for a value Redis does not hold.

local stored = redis.call('HMGET', KEYS[1], 'v', 's')
local seeded_list = stored[2] or ','
local reply = {stored[1] and 1 or 0}
for _, name in ipairs(ARGV) do
  if not string.find(seeded_list, ',' .. name .. ',', 1, true) then
    reply[1] = 0
  end
  local values = redis.call('HMGET', KEYS[1], 'n:' .. name, 'r:' .. name)
  reply[#reply + 1] = tonumber(values[1]) or -1
  reply[#reply + 1] = tonumber(values[2]) or -1
end
return reply
