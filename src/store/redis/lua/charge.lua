-- charge: apply due refills, then spend the cost if every kind can pay
-- (all or nothing), at most once per idempotency key.
--
-- KEYS[1] the user's balances; then (caching a source) the high-water key;
-- then, optional, the idempotency key (IDEMPOTENCY_KEY).
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, idempotency TTL ms,
--       '<request fingerprint>#<charge id>' (the id goes into the key's
--       record), kind count, then per kind: amount, spec.
-- Reply: {outcome, remaining, last refill, ...} with outcome 0 refused,
--        1 allowed, 2 replayed (the key already paid for this request, which
--        finished), 3 in progress (it has not finished), 4 the key already
--        paid for another request. Only 1 spends, and records the key.
--        Caching a source: UNSEEDED, STALE, or {outcome, lineage, version,
--        check (see seeded_point), refilled (1 when a due refill was
--        applied), remaining, ...}.

local t = decision_time(ARGV[1])
local kinds = read_kinds(6, tonumber(ARGV[5]), 1)
local fingerprint, charge = string.match(ARGV[4], '^([^#]*)#(%d+)$')
local reply = {}
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version, check = seeded_point(KEYS[1], kinds)
  if not lineage then
    return version
  end
  reply = {0, lineage, version, check, 0}
end
load(KEYS[1], kinds, t)
if reply[5] then
  for _, kind in ipairs(kinds) do
    if kind.new_r then
      reply[5] = 1
    end
  end
end

local outcome = 1
if IDEMPOTENCY_KEY then
  local record = idempotency_record(IDEMPOTENCY_KEY)
  if record and record.expires > t then
    if record.fingerprint ~= fingerprint then
      outcome = 4
    elseif record.finished then
      outcome = 2
    else
      outcome = 3
    end
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
    if not REDIS_HOLDS_THE_TRUTH then
      redis.call('HINCRBY', KEYS[1], 'u:' .. kind.name, kind[1])
    end
  end
  if IDEMPOTENCY_KEY then
    local ttl = tonumber(ARGV[3])
    redis.call('SET', IDEMPOTENCY_KEY, (t + ttl) .. ' R ' .. fingerprint .. '#' .. charge,
      'PX', ttl)
  end
end
save(KEYS[1], kinds, ARGV[2])
reply[1] = outcome
return balances_reply(reply, kinds)
