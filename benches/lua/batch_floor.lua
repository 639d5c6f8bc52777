-- The floor of a batched decision on the ticket layer's key layout (see
-- benches/redis_decision.sh): per user of the call, the one read and the
-- one write a charge cannot do without (HMGET of the kind's fields, HSET
-- of the balance) and its reply in the charge's flat list (count, outcome,
-- remaining, last refill), with no check, no refill, no expiry.
local replies = {}
for i = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[i], 'n:upload', 'r:upload', 'p:upload')
  local n = (tonumber(values[1]) or 1000000000) - 1
  redis.call('HSET', KEYS[i], 'n:upload', n)
  replies[4 * i - 3], replies[4 * i - 2], replies[4 * i - 1], replies[4 * i] =
    3, 1, n, tonumber(values[2]) or 0
end
return replies
