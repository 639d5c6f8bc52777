-- The floor of any layout that keeps each user's expiry (see
-- benches/redis_decision.sh): batch_strings.lua's one balance per string
-- and one MGET per call, but each decision written by its own
-- SET ... KEEPTTL, the one command per decision such a layout cannot do
-- without (MSET drops the keys' expiry). No check, no refill, one kind.
local values = redis.call('MGET', unpack(KEYS))
local replies = {}
for i = 1, #KEYS do
  local n, r = 1000000000, 0
  if values[i] then
    local left, last = string.match(values[i], '^(%d+) (%d+)$')
    n, r = tonumber(left), tonumber(last)
  end
  n = n - 1
  redis.call('SET', KEYS[i], n .. ' ' .. r, 'KEEPTTL')
  replies[4 * i - 3], replies[4 * i - 2], replies[4 * i - 1], replies[4 * i] = 3, 1, n, r
end
return replies
