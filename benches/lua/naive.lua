-- The naive peer of benches/peers.rs (and of benches/redis_decision.sh):
-- a hand-written quota script, one call per decision. KEYS[1] the user's
-- hash; ARGV: cost, capacity, refill period ms. Reply {allowed, left,
-- last refill}.
local key = KEYS[1]
local cost = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local stored = redis.call('HMGET', key, 'n', 'r')
local n, r = tonumber(stored[1]), tonumber(stored[2])
if not n then
  n, r = capacity, t
elseif t - r >= period then
  n, r = math.max(n, capacity), t
end
if n < cost then
  return {0, n, r}
end
n = n - cost
redis.call('HSET', key, 'n', n, 'r', r)
return {1, n, r}
