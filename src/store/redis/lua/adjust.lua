-- adjust: grant (add), set or reset (refill now) balances, after applying
-- due refills, all kinds at once, at most once per idempotency key.
--
-- KEYS[1] the user's balances; then (caching a source) the high-water key;
-- then, optional, the idempotency key (see user_keys).
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, idempotency TTL ms,
--       request fingerprint, kind count, then per kind: 'grant', 'set' or
--       'reset', amount, spec.
-- Reply: {outcome, remaining, last refill, ...} with outcome 1 applied,
--        2 replayed (the key already made these changes: the balances are
--        the first answer), 3 in progress (made, but the write-through has
--        not finished writing them), 4 the key already served another
--        request (no balances after 3 and 4). Only 1 changes anything, and
--        records the key with its answer: finished when Redis holds the
--        truth, running until the write-through finishes it otherwise.
--        Caching a source: UNSEEDED, STALE, or {outcome, lineage, version,
--        check (see seeded_point), ...}.

local HIGH_WATER, IDEMPOTENCY_KEY = user_keys(1, #KEYS)
local t = decision_time(ARGV[1])
local kinds = read_kinds(6, tonumber(ARGV[5]), 2)
local reply, values = {1}, nil
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version, check
  lineage, version, check, values = seeded_point(KEYS[1], HIGH_WATER, kinds)
  if not lineage then
    return version
  end
  reply = {1, lineage, version, check}
end

if IDEMPOTENCY_KEY then
  local record = idempotency_record(IDEMPOTENCY_KEY)
  if record and record.expires > t then
    if record.fingerprint ~= ARGV[4] then
      reply[1] = 4
    elseif record.finished then
      reply[1] = 2
      for value in string.gmatch(record.answer, '%d+') do
        reply[#reply + 1] = tonumber(value)
      end
    else
      reply[1] = 3
    end
    return reply
  end
end

load(KEYS[1], kinds, t, values)
for _, kind in ipairs(kinds) do
  local amount = tonumber(kind[2])
  if kind[1] == 'grant' then
    kind.n = math.min(kind.n + amount, MAX_BALANCE)
  elseif kind[1] == 'set' then
    kind.n = amount
  else
    kind.n = math.max(kind.n, kind.spec.capacity)
    if kind.r < t then
      kind.r = t
      kind.new_r = true
    end
  end
  kind.new_n = true
end
save(KEYS[1], kinds, ARGV[2])
reply = balances_reply(reply, kinds)

if IDEMPOTENCY_KEY then
  local answer = {}
  for _, kind in ipairs(kinds) do
    answer[#answer + 1] = string.format('%d %d', kind.n, kind.r)
  end
  local state = REDIS_HOLDS_THE_TRUTH and ' D ' or ' R '
  local ttl = tonumber(ARGV[3])
  redis.call('SET', IDEMPOTENCY_KEY,
    (t + ttl) .. state .. ARGV[4] .. ' ' .. table.concat(answer, ' '), 'PX', ttl)
end
return reply
