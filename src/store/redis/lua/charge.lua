-- charge: for each user of the call, apply due refills, then spend the cost
-- if every kind can pay (all or nothing), at most once per idempotency key.
-- One call decides for one user, or (batching, on a standalone server) for
-- every charge queued while the previous call was in flight: the call's
-- fixed costs and the kind specs are shared, each decision is its own.
--
-- KEYS: each decision's keys in turn: the user's balances; then (caching a
--       source) the high-water key; then, optional, the idempotency key.
-- ARGV: idempotency TTL ms, spec count, the specs (see common.lua), shape
--       count, the shapes, then the decisions.
--       A shape is what the decisions of a call share (most decisions of a
--       route do): key count, decision time ('' = Redis TIME), idle TTL ms,
--       kind count, then the index of each kind's spec (from 1).
--       A decision: the index of its shape (from 1), with an idempotency
--       key '<request fingerprint>#<charge id>' (the id goes into the key's
--       record), then each kind's amount.
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

-- Reads the shape at ARGV[at]; returns it and the index after it.
local function read_shape(at, specs)
  local count = tonumber(ARGV[at + 3])
  local key_count = tonumber(ARGV[at])
  local shape = {key_count = key_count, time = ARGV[at + 1], idle_ttl = ARGV[at + 2],
    keyed = key_count > (REDIS_HOLDS_THE_TRUTH and 1 or 2), specs = {}}
  for k = 1, count do
    shape.specs[k] = specs[tonumber(ARGV[at + 3 + k])]
  end
  return shape, at + 4 + count
end

-- The decision of `shape` whose keys start at KEYS[first] and whose
-- arguments start at ARGV[at].
local function charge(first, shape, at)
  local key = KEYS[first]
  local high_water, idempotency_key = user_keys(first, shape.key_count)
  local t = decision_time(shape.time)
  local count = #shape.specs
  local kinds = new_kinds(count)
  local amounts = shape.keyed and at + 2 or at + 1
  for k = 1, count do
    set_kind(k, shape.specs[k], tonumber(ARGV[amounts + k - 1]))
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
    fingerprint, charge_id = string.match(ARGV[at + 1], '^([^#]*)#(%d+)$')
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
  save(key, kinds, shape.idle_ttl)
  reply[1] = outcome
  return balances_reply(reply, kinds)
end

-- Each call reads Redis's clock anew: the charge library (the function)
-- keeps common.lua's locals from one call to the next.
redis_now = nil

local specs, at = {}, 3
for s = 1, tonumber(ARGV[2]) do
  specs[s], at = read_spec(at)
end
local shapes, shape_count = {}, tonumber(ARGV[at])
at = at + 1
for s = 1, shape_count do
  shapes[s], at = read_shape(at, specs)
end
local replies, first = {}, 1
while at <= #ARGV do
  local shape = shapes[tonumber(ARGV[at])]
  local ok, reply = pcall(charge, first, shape, at)
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
  first = first + shape.key_count
  at = at + (shape.keyed and 2 or 1) + #shape.specs
end
return replies
