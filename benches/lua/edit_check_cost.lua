-- The Redis work the edit check adds to each write-through script (see
-- `seeded_point` in src/store/redis/lua/common.lua): two more fields read
-- in the user's HMGET, and one TIME call. Runs the read ARGV[1] times in
-- one script, with the check's part (ARGV[2] = '1') or without, and
-- answers the microseconds it took. docs/benchmarks.md gives the command
-- and the figures.
local n = tonumber(ARGV[1])
local with = ARGV[2] == '1'
local t0 = redis.call('TIME')
for i = 1, n do
  if with then
    local v = redis.call('HMGET', KEYS[1], 'l', 'v', 's', 'f', 'fc', 'n:upload', 'r:upload', 'n:ai', 'r:ai')
    local t = redis.call('TIME')
  else
    local v = redis.call('HMGET', KEYS[1], 'l', 'v', 's', 'n:upload', 'r:upload', 'n:ai', 'r:ai')
  end
end
local t1 = redis.call('TIME')
return (tonumber(t1[1]) - tonumber(t0[1])) * 1000000 + tonumber(t1[2]) - tonumber(t0[2])
