-- charge: for each user of the call, apply due refills, then spend the cost
-- if every kind can pay (all or nothing), at most once per idempotency key.
-- One call decides for one user, or (batching, on a standalone server) for
-- every charge queued while the previous call was in flight: the call's
-- fixed costs and the kind specs are shared, each decision is its own.
--
-- KEYS: each decision's keys in turn: the user's balances; then (caching a
--       source) the high-water key; then, optional, the idempotency key.
-- ARGV: idempotency TTL ms, spec count, the specs (see common.lua), then
--       per decision: its key count, decision time ('' = Redis TIME), idle
--       TTL ms, '<request fingerprint>#<charge id>' with an idempotency key
--       (the id goes into the key's record) or '', kind count, then per
--       kind: the index of its spec (from 1), amount.
-- Reply: per decision, in order, {outcome, remaining, last refill, ...}
--        with outcome 0 refused, 1 allowed, 2 replayed (the key already paid
--        for this request, which finished), 3 in progress (it has not
--        finished), 4 the key already paid for another request. Only 1
--        spends, and records the key.
--        Caching a source: UNSEEDED, STALE, WAIT, or {outcome, lineage,
--        version, check (see seeded_point), refilled (1 when a due refill
--        was applied), remaining, ...}.
--        A decision that fails (a corrupt value) is an error in its place;
--        the others stand.

local IDEMPOTENCY_TTL = tonumber(ARGV[1])

-- The decision whose keys start at KEYS[first] (`key_count` of them) and
-- whose arguments start at ARGV[at].
local function charge(first, key_count, at, specs)
  local key = KEYS[first]
  local high_water, idempotency_key = user_keys(first, key_count)
  local t = decision_time(ARGV[at + 1])
  local count = tonumber(ARGV[at + 4])
  local kinds = new_kinds(count)
  for k = 1, count do
    set_kind(k, specs[tonumber(ARGV[at + 3 + 2 * k])], tonumber(ARGV[at + 4 + 2 * k]))
  end
  local reply = {}
  if not REDIS_HOLDS_THE_TRUTH then
    local lineage, version, check = seeded_point(key, high_water, kinds)
    if not lineage then
      return version
    end
    reply = {0, lineage, version, check, 0}
    load(key, kinds, t)
    for k = 1, count do
      if kinds[k].new_r then
        reply[5] = 1
      end
    end
  else
    load(key, kinds, t)
  end

  local outcome = 1
  local fingerprint, charge_id = nil, nil
  if idempotency_key then
    fingerprint, charge_id = string.match(ARGV[at + 3], '^([^#]*)#(%d+)$')
    local record = idempotency_record(idempotency_key)
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
    for k = 1, count do
      if kinds[k].n < kinds[k][1] then
        outcome = 0
      end
    end
  end
  if outcome == 1 then
    for k = 1, count do
      local kind = kinds[k]
      kind.n = kind.n - kind[1]
      kind.new_n = true
      if not REDIS_HOLDS_THE_TRUTH then
        redis.call('HINCRBY', key, 'u:' .. kind.spec.name, kind[1])
      end
    end
    if idempotency_key then
      redis.call('SET', idempotency_key,
        (t + IDEMPOTENCY_TTL) .. ' R ' .. fingerprint .. '#' .. charge_id, 'PX', IDEMPOTENCY_TTL)
    end
  end
  save(key, kinds, ARGV[at + 2])
  reply[1] = outcome
  return balances_reply(reply, kinds)
end

local specs, at = {}, 3
for s = 1, tonumber(ARGV[2]) do
  specs[s], at = read_spec(at)
end
local replies, first = {}, 1
while at <= #ARGV do
  local key_count = tonumber(ARGV[at])
  local ok, reply = pcall(charge, first, key_count, at, specs)
  if not ok and type(reply) ~= 'table' then
    -- Redis hands errors raised as {err = ...} to pcall as their text; a
    -- text without an error code is a fault of the script itself.
    reply = tostring(reply)
    if not string.find(reply, '^%u[%u_]* ') then
      reply = 'ERR tower-tickets charge failed: ' .. reply
    end
    reply = {err = reply}
  end
  replies[#replies + 1] = reply
  first = first + key_count
  at = at + 5 + 2 * tonumber(ARGV[at + 4])
end
return replies
