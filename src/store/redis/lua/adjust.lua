-- adjust: grant (add) or set a balance, after applying a due refill.
--
-- KEYS[1] the user's balances; caching a source, KEYS[2] its high-water key.
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, kind count, then per
--       kind: 'grant' or 'set', amount, spec.
-- Reply: {remaining, last refill, ...}. Caching a source: UNSEEDED, or
--        {lineage, version, then as above}.

local t = decision_time(ARGV[1])
local kinds = read_kinds(4, tonumber(ARGV[3]), 2)
local reply = {}
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version = seeded_point(KEYS[1], kinds)
  if not lineage then
    return UNSEEDED
  end
  reply = {lineage, version}
end
load(KEYS[1], kinds, t)
for _, kind in ipairs(kinds) do
  local amount = tonumber(kind[2])
  if kind[1] == 'grant' then
    kind.n = math.min(kind.n + amount, MAX_BALANCE)
  else
    kind.n = amount
  end
  kind.new_n = true
end
save(KEYS[1], kinds, ARGV[2])
return balances_reply(reply, kinds)
