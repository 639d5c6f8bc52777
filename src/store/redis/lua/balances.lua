-- balances: read balances without changing them (caching a source, the
-- claim of a due check of the source is the one thing written); a due
-- refill shows as applied, a user never seen shows their initial balances.
--
-- KEYS[1] the user's balances; caching a source, KEYS[2] its high-water key.
-- ARGV: decision time ('' = Redis TIME), kind count, then per kind: spec.
-- (Caching a source, a due check of the source is claimed: see
-- seeded_point.)
-- Reply: {remaining, last refill, ...}; caching a source, UNSEEDED, STALE,
--        or {lineage, version, check, remaining, last refill, ...}.

local HIGH_WATER = user_keys(1, #KEYS)
local t = decision_time(ARGV[1])
local kinds = read_kinds(3, tonumber(ARGV[2]), 0)
local reply, values = {}, nil
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version, check
  lineage, version, check, values = seeded_point(KEYS[1], HIGH_WATER, kinds)
  if not lineage then
    return version
  end
  reply = {lineage, version, check}
end
load(KEYS[1], kinds, t, values)
return balances_reply(reply, kinds)
