-- snapshot: the user's balances, to be written to Firestore, under a new
-- version; and the pending-changes counter that the write will cover.
-- Balances the Redis store made on its own (a kind outside the seeded list,
-- or a whole hash without a version) are not the truth: they are discarded
-- and nothing is written.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending counter.
-- ARGV: kind names.
-- Reply: {0} lost (no hash, or something discarded); {1} a kind was never
--        seeded (read it from Firestore first); else {2, version, pending,
--        then per kind: count, last refill ms}.

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'v', 's')
if not stored[1] then
  redis.call('DEL', key)
  return {0}
end
local seeded_list = stored[2] or ','
local reply = {2, 0, 0}
local bogus = {}
local unseeded = false
for _, name in ipairs(ARGV) do
  local n, r = 'n:' .. name, 'r:' .. name
  local values = redis.call('HMGET', key, n, r)
  if string.find(seeded_list, ',' .. name .. ',', 1, true) then
    local count, refill = tonumber(values[1]), tonumber(values[2])
    if not count or not refill then
      error({err = 'TICKETS_CORRUPT ' .. key .. ' lacks ' .. n .. ' or ' .. r ..
        ', though ' .. name .. ' was seeded'})
    end
    reply[#reply + 1] = count
    reply[#reply + 1] = refill
  else
    unseeded = true
    if values[1] or values[2] then
      bogus[#bogus + 1] = n
      bogus[#bogus + 1] = r
    end
  end
end
if #bogus > 0 then
  redis.call('HDEL', key, unpack(bogus))
  return {0}
end
if unseeded then
  return {1}
end
reply[2] = redis.call('HINCRBY', key, 'v', 1)
reply[3] = tonumber(redis.call('GET', KEYS[2])) or 0
return reply
