-- Another layout's floor (see benches/redis_decision.sh): each user's
-- balance one string '<left> <last refill>', every user of the call read
-- by one MGET. Written by one MSET for the whole call, so that Redis
-- commands per decision no longer grow with the call; or, with ARGV[1]
-- 'keepttl', by one SET ... KEEPTTL per decision: MSET drops the keys'
-- expiry, so that is the least a layout that keeps each user's expiry can
-- do. Per user: parse, spend, format, reply (in the charge's flat list).
local keep_ttl = ARGV[1] == 'keepttl'
local values = redis.call('MGET', unpack(KEYS))
local writes, replies = {}, {}
for i = 1, #KEYS do
  local n, r = 1000000000, 0
  if values[i] then
    local left, last = string.match(values[i], '^(%d+) (%d+)$')
    n, r = tonumber(left), tonumber(last)
  end
  n = n - 1
  if keep_ttl then
    redis.call('SET', KEYS[i], n .. ' ' .. r, 'KEEPTTL')
  else
    writes[2 * i - 1], writes[2 * i] = KEYS[i], n .. ' ' .. r
  end
  replies[4 * i - 3], replies[4 * i - 2], replies[4 * i - 1], replies[4 * i] = 3, 1, n, r
end
if not keep_ttl then
  redis.call('MSET', unpack(writes))
end
return replies
