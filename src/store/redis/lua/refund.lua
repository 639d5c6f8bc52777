-- refund: give back an allowed charge; for a kind refilled since, only what
-- the refill did not restore (giving back what it did would mint tickets):
-- computed as if the refill had come right after the charge, from the
-- balance the charge left. Forgets the charge's idempotency key so that a
-- retry is charged again.
--
-- KEYS[1] the user's balances; KEYS[2] (optional) the idempotency key.
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, kind count, then per
--       kind: amount, last refill at the charge (Unix ms), balance left by
--       the charge, spec.
--       Caching a source, two more: the lineage and version of the charge;
--       a charge that is not part of the state Redis holds (lost with a
--       flushed or reloaded state) gives nothing back.
-- Reply: {tickets given back, remaining, last refill, ...} per kind.
--        Caching a source: UNSEEDED, or {lineage, version, then as above}.

local t = decision_time(ARGV[1])
local count = tonumber(ARGV[3])
local kinds = read_kinds(4, count, 3)
local reply = {}
local included = true
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version = seeded_point(KEYS[1], kinds)
  if not lineage then
    return UNSEEDED
  end
  reply = {lineage, version}
  included = includes(KEYS[1], lineage, version, tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV]))
end
load(KEYS[1], kinds, t)
if KEYS[2] then
  redis.call('DEL', KEYS[2])
end

for _, kind in ipairs(kinds) do
  local amount = included and tonumber(kind[1]) or 0
  if amount > 0 and kind.r ~= tonumber(kind[2]) then
    local left, capacity = tonumber(kind[3]), tonumber(kind.capacity)
    amount = math.max(left + amount, capacity) - math.max(left, capacity)
  end
  if amount > 0 then
    kind.n = math.min(kind.n + amount, MAX_BALANCE)
    kind.new_n = true
  end
  reply[#reply + 1] = amount
  reply[#reply + 1] = kind.n
  reply[#reply + 1] = kind.r
end
save(KEYS[1], kinds, ARGV[2])
return reply
