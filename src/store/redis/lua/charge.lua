-- charge: for each user of the call, apply due refills, then spend the cost
-- if every kind can pay (all or nothing), at most once per idempotency key.
-- One call decides for one user, or (batching, on a standalone server) for
-- every charge queued while the previous call was in flight: the call's
-- fixed costs and its plan are shared, each decision is its own.
--
-- KEYS: each decision's keys in turn: the user's balances; then (caching a
--       source) the high-water key; then, optional, the idempotency key.
-- ARGV: the plan, then the decisions.
--       The plan is one argument, words separated by spaces: idempotency
--       TTL ms, spec count, the specs (see common.lua), shape count, the
--       shapes. A shape is what the decisions of a call share (most
--       decisions of a route do): key count, idle TTL ms, kind count, then
--       the index of each kind's spec (from 1). A store sends the same plan
--       for a route's charges call after call; the charge library (the
--       function, CHARGE_PLANS) keeps what it read of the latest plans, so
--       a call reads only its decisions. A script reads its plan every call.
--       The decisions go in runs: a run is decisions alike but for their
--       keys (most of a batch), sent as its length, then once: the index of
--       their shape (from 1), their time ('' = Redis TIME), with an
--       idempotency key '<request fingerprint>#<charge id>' (the id goes
--       into the key's record; a keyed decision is a run of its own), then
--       each kind's amount.
-- Reply: one flat list: per decision, in order, the count of its values,
--        then the values: {outcome, remaining, last refill, ...} with
--        outcome 0 refused, 1 allowed, 2 replayed (the key already paid for
--        this request, which finished), 3 in progress (it has not finished),
--        4 the key already paid for another request. Only 1 spends, and
--        records the key.
--        Caching a source: UNSEEDED, STALE, WAIT, or {outcome, lineage,
--        version, check (see seeded_point), refilled (1 when a due refill
--        was applied), remaining, ...}.
--        A decision that fails (a corrupt value) is an error in its place,
--        with no count; the others stand. (One list, not a list per
--        decision: a table costs Redis more than a decision's arithmetic.)

-- Reads the shape at args[at] of the plan's words; returns it and the
-- index after it.
local function read_shape(args, at, specs)
  local key_count = tonumber(args[at])
  local count = tonumber(args[at + 2])
  local shape = {key_count = key_count, idle_ttl = args[at + 1],
    keyed = key_count > (REDIS_HOLDS_THE_TRUTH and 1 or 2), specs = {}}
  for k = 1, count do
    shape.specs[k] = specs[tonumber(args[at + 2 + k])]
  end
  return shape, at + 3 + count
end

-- The plan of ARGV[1]: {ttl = idempotency TTL ms, shapes = {...}}.
local function read_plan(text)
  local args = {}
  for word in string.gmatch(text, '%S+') do
    args[#args + 1] = word
  end
  local specs, at = {}, 3
  for s = 1, tonumber(args[2]) do
    specs[s], at = read_spec(args, at)
  end
  local shapes, count = {}, tonumber(args[at])
  at = at + 1
  for s = 1, count do
    shapes[s], at = read_shape(args, at, specs)
  end
  return {ttl = tonumber(args[1]), shapes = shapes}
end

-- The most common decision, made without the general one's tables (see
-- charge()): Redis holding the truth, one kind, no idempotency key, and
-- `values` (the kind's spec.fields as read) a sound stored balance at most
-- the kind's capacity, its refill not due at `t`, neither held nor to be
-- held (see save()). Appends the reply and returns true; otherwise changes
-- nothing and returns false, and the general decision decides. Both decide
-- alike wherever this one does (the_plain_decision_agrees_with_the_general_one
-- in tests/redis_store.rs).
local function decided_plainly(replies, key, spec, values, t, amount)
  if spec.kept or values[3] then
    return false
  end
  local n, r = tonumber(values[1]), tonumber(values[2])
  if not n or not r or n < 0 or n % 1 ~= 0 or n > spec.capacity or r < 0 or r % 1 ~= 0 then
    return false
  end
  local due = cutoff(spec, t)
  if due and r <= due then
    return false
  end
  local outcome = 0
  if n >= amount then
    n, outcome = n - amount, 1
    redis.call('HSET', key, spec.n_field, n)
  end
  local size = #replies
  replies[size + 1], replies[size + 2], replies[size + 3], replies[size + 4] = 3, outcome, n, r
  return true
end

-- The decision of `shape` whose keys start at KEYS[first] and whose
-- arguments start at ARGV[at], appended to `replies` once made (a decision
-- that fails appends nothing).
local function charge(replies, ttl, first, shape, at)
  local key = KEYS[first]
  local t = decision_time(ARGV[at + 1])
  local count = #shape.specs
  local amounts = shape.keyed and at + 3 or at + 2
  local values = nil
  if REDIS_HOLDS_THE_TRUTH and count == 1 and not shape.keyed then
    values = read_fields(key, shape.specs[1].fields)
    if decided_plainly(replies, key, shape.specs[1], values, t, tonumber(ARGV[amounts])) then
      return
    end
  end
  local high_water, idempotency_key = user_keys(first, shape.key_count)
  local kinds = new_kinds(count)
  for k = 1, count do
    set_kind(k, shape.specs[k], tonumber(ARGV[amounts + k - 1]))
  end
  local lineage, version, check, refilled = nil, nil, nil, 0
  if not REDIS_HOLDS_THE_TRUTH then
    lineage, version, check, values = seeded_point(key, high_water, kinds)
    if not lineage then
      -- (version holds the one-value reply)
      local size = #replies
      replies[size + 1], replies[size + 2] = 1, version[1]
      return
    end
  end
  load(key, kinds, t, values)
  if not REDIS_HOLDS_THE_TRUTH then
    for k = 1, count do
      if kinds[k].new_r then
        refilled = 1
      end
    end
  end

  local outcome = 1
  local fingerprint, charge_id = nil, nil
  if idempotency_key then
    fingerprint, charge_id = string.match(ARGV[at + 2], '^([^#]*)#(%d+)$')
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
        (t + ttl) .. ' R ' .. fingerprint .. '#' .. charge_id, 'PX', ttl)
    end
  end
  save(key, kinds, shape.idle_ttl)
  local size = #replies
  if REDIS_HOLDS_THE_TRUTH then
    replies[size + 1], replies[size + 2] = 1 + 2 * count, outcome
  else
    replies[size + 1], replies[size + 2], replies[size + 3], replies[size + 4],
      replies[size + 5], replies[size + 6] = 5 + 2 * count, outcome, lineage, version, check,
      refilled
  end
  balances_reply(replies, kinds)
end

-- The call: every decision in turn, in one flat reply. A script runs it
-- once per call, after defining the functions above; the charge library
-- (library.rs) defines them once, when it loads, and runs only this.
local function charge_call()
  -- Each call reads Redis's clock anew: the charge library keeps
  -- common.lua's locals from one call to the next.
  redis_now = nil

  local plan = CHARGE_PLANS and CHARGE_PLANS.known[ARGV[1]]
  if not plan then
    plan = read_plan(ARGV[1])
    if CHARGE_PLANS then
      -- The library's: a few plans per store at a time (a calendar refill's
      -- cutoffs move on each boundary), so past 64 it starts over.
      if CHARGE_PLANS.count >= 64 then
        CHARGE_PLANS.known, CHARGE_PLANS.count = {}, 0
      end
      CHARGE_PLANS.known[ARGV[1]], CHARGE_PLANS.count = plan, CHARGE_PLANS.count + 1
    end
  end
  local replies, shapes, ttl, first, at = {}, plan.shapes, plan.ttl, 1, 2
  while at <= #ARGV do
    local run = tonumber(ARGV[at])
    at = at + 1
    local shape = shapes[tonumber(ARGV[at])]
    for _ = 1, run do
      local ok, failure = pcall(charge, replies, ttl, first, shape, at)
      if not ok then
        if type(failure) ~= 'table' then
          -- Redis hands errors raised as {err = ...} to pcall as their text;
          -- a text without an error code is a fault of the script itself.
          failure = tostring(failure)
          if not string.find(failure, '^%u[%u_]* ') then
            failure = 'ERR tower-tickets charge failed: ' .. failure
          end
          failure = {err = failure}
        end
        replies[#replies + 1] = failure
      end
      first = first + shape.key_count
    end
    at = at + (shape.keyed and 3 or 2) + #shape.specs
  end
  return replies
end

return charge_call()
