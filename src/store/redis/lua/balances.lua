-- balances: read balances without writing anything; a due refill shows as
-- applied, a user never seen shows their initial balances.
--
-- KEYS[1] the user's balances; caching a source, KEYS[2] its high-water key.
-- ARGV: decision time ('' = Redis TIME), kind count, then per kind: spec.
-- Reply: {remaining, last refill, ...}; caching a source, UNSEEDED for a
--        user not seeded from it.

local t = decision_time(ARGV[1])
local kinds = read_kinds(3, tonumber(ARGV[2]), 0)
if not REDIS_HOLDS_THE_TRUTH and not seeded_point(KEYS[1], kinds) then
  return UNSEEDED
end
load(KEYS[1], kinds, t)
return balances_reply({}, kinds)
