-- seed: record balances for kinds Redis does not hold yet (a new user, or a
-- user loaded from the source of truth after a cache miss), never touching a
-- kind it holds; then apply due refills like every other script.
--
-- KEYS[1] the user's balances.
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, kind count, then per
--       kind: last refill of the seeded balance (Unix ms, '' = the decision
--       time), spec (its initial balance is the one seeded).
-- Reply: {remaining, last refill, ...} as stored.

local t = decision_time(ARGV[1])
local kinds = read_kinds(4, tonumber(ARGV[3]), 1)
for _, kind in ipairs(kinds) do
  if kind[1] ~= '' then
    kind.born = tonumber(kind[1])
  end
end
load(KEYS[1], kinds, t)
save(KEYS[1], kinds, ARGV[2])
return balances_reply({}, kinds)
