-- A string layout that keeps each user's expiry (see
-- benches/redis_decision.sh): each user's whole state one string
-- ';<kind> <left> <last refill>;...' (two kinds here), every user of the
-- call read by one MGET, each decision written back by its own
-- SET ... KEEPTTL (MSET would drop the keys' expiry, which bounds Redis's
-- memory by the active users). Per user: find the kind, parse, spend,
-- format, write, reply (in the charge's flat list).
local values = redis.call('MGET', unpack(KEYS))
local replies = {}
for i = 1, #KEYS do
  local record = values[i]
  local n, r, head, tail = 1000000000, 0, ';upload ', ';ai 3 0;'
  if record then
    local _, at = string.find(record, ';upload ', 1, true)
    local left, last, rest = string.match(record, '^(%d+) (%d+)(.*)$', at + 1)
    n, r, head, tail = tonumber(left), tonumber(last), string.sub(record, 1, at), rest
  end
  n = n - 1
  redis.call('SET', KEYS[i], head .. n .. ' ' .. r .. tail, 'KEEPTTL')
  replies[4 * i - 3], replies[4 * i - 2], replies[4 * i - 1], replies[4 * i] = 3, 1, n, r
end
return replies
