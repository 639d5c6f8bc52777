-- refund: give back an allowed charge, except for kinds refilled since (the
-- balance was reset: giving the tickets back would mint them). Forgets the
-- charge's idempotency key so that a retry is charged again.
--
-- KEYS[1] the user's balances; KEYS[2] (optional) the idempotency key.
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, kind count, then per
--       kind: amount, last refill at the charge (Unix ms), spec.
-- Reply: {refunded (1 or 0), remaining, last refill, ...} per kind.

local t = decision_time(ARGV[1])
local kinds = read_kinds(4, tonumber(ARGV[3]), 2)
load(KEYS[1], kinds, t)
if KEYS[2] then
  redis.call('DEL', KEYS[2])
end

local reply = {}
for _, kind in ipairs(kinds) do
  local same_period = kind.r == tonumber(kind[2])
  if same_period then
    kind.n = math.min(kind.n + tonumber(kind[1]), MAX_BALANCE)
    kind.new_n = true
  end
  reply[#reply + 1] = same_period and 1 or 0
  reply[#reply + 1] = kind.n
  reply[#reply + 1] = kind.r
end
save(KEYS[1], kinds, ARGV[2])
return reply
