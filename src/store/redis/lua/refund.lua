-- refund: give back an allowed charge; for a kind refilled since, only what
-- the refill did not restore (giving back what it did would mint tickets):
-- computed as if the refill had come right after the charge, from the
-- balance the charge left. Forgets the charge's idempotency key so that a
-- retry is charged again.
--
-- KEYS[1] the user's balances; then (caching a source) the high-water key;
-- then, optional, the idempotency key (see user_keys).
-- ARGV: decision time ('' = Redis TIME), idle TTL ms, kind count, then per
--       kind: amount, last refill at the charge (Unix ms), balance left by
--       the charge, spec.
--       Caching a source, two more: the lineage and version of the charge
--       (a charge that is not part of the state Redis holds, lost with a
--       flushed or reloaded state, gives nothing back). Last, the charge's
--       id: its idempotency key is forgotten only if it still serves this
--       charge, and (caching a source) a charge refunded already in this
--       state gives nothing back again, so that the write-through can retry
--       a refund it could not write (the recent ids are kept in `x`).
-- Reply: {tickets given back, remaining, last refill, ...} per kind.
--        Caching a source: UNSEEDED, STALE, or {lineage, version, check
--        (see seeded_point), then as above}.

local HIGH_WATER, IDEMPOTENCY_KEY = user_keys(1, #KEYS)
local t = decision_time(ARGV[1])
local count = tonumber(ARGV[3])
local kinds = read_kinds(4, count, 3)
local reply, values = {}, nil
local included = true
if not REDIS_HOLDS_THE_TRUTH then
  local lineage, version, check
  lineage, version, check, values = seeded_point(KEYS[1], HIGH_WATER, kinds)
  if not lineage then
    return version
  end
  reply = {lineage, version, check}
  included = includes(KEYS[1], lineage, version, tonumber(ARGV[#ARGV - 2]), tonumber(ARGV[#ARGV - 1]))
  local refunded = redis.call('HGET', KEYS[1], 'x') or ''
  if string.find(' ' .. refunded, ' ' .. ARGV[#ARGV] .. ' ', 1, true) then
    included = false
  elseif included then
    local kept, ids = 1, ARGV[#ARGV] .. ' '
    for id in string.gmatch(refunded, '%d+') do
      if kept < 16 then
        ids = ids .. id .. ' '
        kept = kept + 1
      end
    end
    redis.call('HSET', KEYS[1], 'x', ids)
  end
end
load(KEYS[1], kinds, t, values)
if IDEMPOTENCY_KEY then
  -- Only the charge's own record: the key may serve a new request since.
  local record = idempotency_record(IDEMPOTENCY_KEY)
  if record and (record.charge == '' or record.charge == ARGV[#ARGV]) then
    redis.call('DEL', IDEMPOTENCY_KEY)
  end
end

for _, kind in ipairs(kinds) do
  local amount = included and tonumber(kind[1]) or 0
  if amount > 0 and kind.r ~= tonumber(kind[2]) then
    local left, capacity = tonumber(kind[3]), kind.spec.capacity
    amount = math.max(left + amount, capacity) - math.max(left, capacity)
  end
  if amount > 0 then
    kind.n = math.min(kind.n + amount, MAX_BALANCE)
    kind.new_n = true
    if not REDIS_HOLDS_THE_TRUTH then
      local unwritten = tonumber(redis.call('HGET', KEYS[1], 'u:' .. kind.spec.name)) or 0
      if unwritten > 0 then
        redis.call('HSET', KEYS[1], 'u:' .. kind.spec.name, math.max(0, unwritten - amount))
      end
    end
  end
  reply[#reply + 1] = amount
  reply[#reply + 1] = kind.n
  reply[#reply + 1] = kind.r
end
save(KEYS[1], kinds, ARGV[2])
return reply
