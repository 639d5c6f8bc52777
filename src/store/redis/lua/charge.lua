-- charge: apply due refills, then spend the cost if every kind can pay
-- (all or nothing), at most once per idempotency key.
--
-- KEYS[1] the user's balances; KEYS[2] (optional) the idempotency key.
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, idempotency TTL ms,
--       kind count, then per kind: amount, spec.
-- Reply: {outcome, remaining, last refill, ...} with outcome 0 refused,
--        1 allowed, 2 replayed (the key was already charged). Caching a
--        source: UNSEEDED, or {outcome, lineage, version, remaining, ...}.

local t = decision_time(ARGV[1])
local kinds = read_kinds(5, tonumber(ARGV[4]), 1)
local reply = {}
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version = seeded_point(KEYS[1], kinds)
  if not lineage then
    return UNSEEDED
  end
  reply = {0, lineage, version}
end
load(KEYS[1], kinds, t)

local outcome = 1
if KEYS[2] then
  local expires = idempotency_expiry(KEYS[2])
  if expires and expires > t then
    outcome = 2
  end
end
if outcome == 1 then
  for _, kind in ipairs(kinds) do
    if kind.n < tonumber(kind[1]) then
      outcome = 0
    end
  end
end
if outcome == 1 then
  for _, kind in ipairs(kinds) do
    kind.n = kind.n - tonumber(kind[1])
    kind.new_n = true
  end
  if KEYS[2] then
    local ttl = tonumber(ARGV[3])
    redis.call('SET', KEYS[2], t + ttl, 'PX', ttl)
  end
end
save(KEYS[1], kinds, ARGV[2])
reply[1] = outcome
return balances_reply(reply, kinds)
