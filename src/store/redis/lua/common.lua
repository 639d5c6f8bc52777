-- tower-tickets: the part every script shares (each script is this file
-- followed by its own body, sent as one source).
--
-- REDIS_HOLDS_THE_TRUTH, set by the line Rust puts before this file, tells
-- whether Redis holds the only copy of the balances (true) or caches a source
-- of truth that reloads an expired user (false).
--
-- One user's balances live in one hash, KEYS[1] = <prefix>{<uid>}:t, with
-- these fields per kind:
--   n:<kind>  tickets left, a non-negative integer
--   r:<kind>  the last refill, in Unix milliseconds
--   p:<kind>  present while forgetting the user would change this kind's
--            balance (only when Redis holds the truth; see save())
-- When Redis caches a source of truth, the write-through's fields too:
--   l  the lineage: a random id given when the hash was seeded from the
--      source (see store/source/mod.rs)
--   v  the version, raised by every state the write-through takes
--   a  the lineage's origins, 'lineage@version' points
--   s  the kinds seeded from the source, as ',upload,ai,'
--   u:<kind>  tickets charged that no write has carried to the source yet
--      (an edit made meanwhile takes them on top: see check.lua)
--   f  when Redis's state was last known to match the source (seeded from
--      it, written to it, or checked against it), Redis TIME ms
--   fc until when a check of the source is claimed (one caller checks)
-- A script never acts on a hash that lacks them or a kind's fields: such a
-- state is not (or no longer entirely) the truth, and it answers UNSEEDED
-- so that the write-through reloads the user from the source. Nor on a
-- state unchecked for longer than 2 * CHECK_EVERY_MS: somebody may have
-- edited the source meanwhile, and it answers STALE so that the caller
-- checks first (see seeded_point).
-- Every key of one user carries the same hash tag {<uid>}, so a script on
-- one user runs on a single cluster slot (only on a standalone server does
-- the charge script decide for several users in one call).
--
-- A kind travels in ARGV as a spec: the kind's name, the balance a user
-- unseen so far starts with, its capacity, and its refill: 'R', <period ms>
-- for a rolling refill, or 'C' and the last three calendar cutoffs before
-- the caller's clock's next boundary (a calendar refill is due once its
-- boundary has passed, that is once the decision time is past the cutoff;
-- Lua knows no time zones, so Rust computes them). A script reads it into a
-- spec table (read_spec) and decides on a kind table (see new_kinds()) that
-- holds the user's balance and points to the spec: a charge script
-- deciding for several users reads each spec once.
--
-- Every function here is a closure built again on every call (Redis runs a
-- script's body per call), and every table and string a call makes is
-- garbage to collect: what a charge runs is kept to few of each.

local MAX_BALANCE = 4294967295

-- The one-element replies of a script that decided nothing, built where
-- they are returned (a table built on every call costs every call):
-- UNSEEDED {-1}, the user is not seeded; STALE {-2}, the user's state went
-- too long unchecked against the source, and the caller checks; WAIT {-3},
-- the same while another caller checks, and the caller asks again shortly.

-- How often a user's state is checked against the source, at most, while
-- the user is active (an edit made straight to the source is seen within
-- twice that: DESIGN.md §4 asks for 2 s).
local CHECK_EVERY_MS = 1000

-- Aborts the script (or, in a charge for several users, that user's
-- decision) with an error that names what is wrong; Rust turns it into a
-- StoreError of kind Corrupt.
local function corrupt(what)
  error({err = 'TICKETS_CORRUPT ' .. what})
end

-- The keys of one user's call after its balances at KEYS[first], out of
-- `count`: caching a source, the high-water key (see seeded_point) comes
-- second; an idempotency key, if any, last.
local function user_keys(first, count)
  local high_water = nil
  if not REDIS_HOLDS_THE_TRUTH then
    high_water = KEYS[first + 1]
  end
  local idempotency_key = nil
  if count > (high_water and 2 or 1) then
    idempotency_key = KEYS[first + count - 1]
  end
  return high_water, idempotency_key
end

-- This Redis server's clock in Unix ms, read once per call: a script runs
-- atomically, so every decision of the call happens at that instant. (A
-- script's locals are new on every call; the charge library's are not, and
-- its call starts by forgetting the last one's instant.)
local redis_now = nil
local function redis_time()
  if not redis_now then
    local now = redis.call('TIME')
    redis_now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  end
  return redis_now
end

-- The instant of a decision in Unix ms: the caller's, or this Redis
-- server's clock when the caller sends ''.
local function decision_time(arg)
  if arg == '' then
    return redis_time()
  end
  return tonumber(arg)
end

-- Reads the kind spec at args[at] (ARGV, or the tokens of the charge's
-- plan); returns it and the index after it.
-- Values a decision may not need stay strings (the initial balance) or are
-- compared once here (whether a new user starts below capacity); `fields`
-- is what load() reads of a call on this kind alone.
local function read_spec(args, at)
  local name = args[at]
  local n_field, r_field, p_field = 'n:' .. name, 'r:' .. name, 'p:' .. name
  local spec = {name = name, n_field = n_field, r_field = r_field, p_field = p_field,
    fields = REDIS_HOLDS_THE_TRUTH and {n_field, r_field, p_field} or {n_field, r_field},
    initial = args[at + 1], capacity = tonumber(args[at + 2]),
    kept = args[at + 1] ~= args[at + 2], period = false, cutoffs = false}
  if args[at + 3] == 'R' then
    spec.period = tonumber(args[at + 4])
    return spec, at + 5
  end
  spec.cutoffs = {tonumber(args[at + 4]), tonumber(args[at + 5]), tonumber(args[at + 6])}
  return spec, at + 7
end

-- The kinds of the decision being made. A table costs Redis more than a
-- decision's arithmetic, so the next decision of the call (a charge script
-- deciding for several users) reuses them: new_kinds(count) empties the list
-- to `count` kinds, set_kind(k, ...) sets the k-th. Nothing keeps a kind table
-- past its decision.
local decision_kinds = {}
local function new_kinds(count)
  for k = #decision_kinds, count + 1, -1 do
    decision_kinds[k] = nil
  end
  return decision_kinds
end

-- Sets the k-th kind of the decision: its spec, up to three values of the
-- calling script (kind[1] to kind[3]), and the balance load() fills in.
local function set_kind(k, spec, first, second, third)
  local state = decision_kinds[k]
  if not state then
    decision_kinds[k] = {first, second, third, spec = spec, n = 0, r = 0, born = false,
      new_n = false, new_r = false, marked = false}
    return
  end
  state[1], state[2], state[3], state.spec = first, second, third, spec
  state.n, state.r, state.born, state.new_n, state.new_r, state.marked =
    0, 0, false, false, false, false
end

-- Reads `count` kinds from ARGV, starting at `at`; each is `own` (0 to 3)
-- values of the calling script, then a spec.
local function read_kinds(at, count, own)
  local list = new_kinds(count)
  for k = 1, count do
    local first, second, third = nil, nil, nil
    if own > 0 then first = ARGV[at] end
    if own > 1 then second = ARGV[at + 1] end
    if own > 2 then third = ARGV[at + 2] end
    local spec
    spec, at = read_spec(ARGV, at + own)
    set_kind(k, spec, first, second, third)
  end
  return list
end

-- The latest last-refill instant at which a refill of `spec` is due at `t`,
-- or nil.
local function cutoff(spec, t)
  if spec.period then
    return t - spec.period
  end
  local latest = nil
  for c = 1, 3 do
    if spec.cutoffs[c] < t then
      latest = spec.cutoffs[c]
    end
  end
  return latest
end

-- The error for a stored field that is not a number this crate wrote.
local function not_a_number(key, field, value)
  corrupt(key .. ' field ' .. field .. ' holds ' .. string.format('%q', tostring(value)) ..
    ', not a number written by tower-tickets')
end

-- A stored field as a number, or an error naming the key and field.
local function stored_integer(key, field, value)
  if type(value) ~= 'string' or not string.find(value, '^%d+$') then
    not_a_number(key, field, value)
  end
  return tonumber(value)
end

-- The error for a key that holds another type than a script expects.
local function wrong_type(key, expected)
  corrupt(key .. ' holds a ' .. redis.call('TYPE', key).ok .. ', not ' .. expected)
end

-- The values of `fields` in the user's hash `key` (false for an absent
-- one), or an error if `key` is not a hash.
local function read_fields(key, fields)
  local values = redis.pcall('HMGET', key, unpack(fields))
  if values.err then
    wrong_type(key, 'the hash of ticket balances')
  end
  return values
end

-- The user's point when Redis caches a source of truth and holds every kind
-- of `kinds` as seeded from it, with both fields: lineage, version,
-- whether this caller should check the source for an edit (1: the check is
-- due, and this caller claimed it; 0: not now), and the kinds' fields as
-- read, for load() (which reads them again otherwise). Otherwise nil and the
-- reply to give: UNSEEDED, or, when the state went unchecked for over
-- 2 * CHECK_EVERY_MS, STALE to the caller that claims the check (it checks
-- before anything is decided, and marks the state checked even when the
-- source does not answer: Redis's state then decides) and WAIT to the
-- others while the claim lasts (a burst right after an edit must not be
-- decided on the state before it).
-- UNSEEDED too for a stale hash: the high-water key (the lineage and
-- version of the last state the source took, or of the seeding) names
-- another lineage or a later version. A hash restored from an old dump
-- is such a hash; the write-through then reloads the user.
local function seeded_point(key, high_water, kinds)
  -- Each kind's fields first, in load()'s order, then the state's.
  local count = #kinds
  local fields = {}
  for k = 1, count do
    fields[2 * k - 1] = kinds[k].spec.n_field
    fields[2 * k] = kinds[k].spec.r_field
  end
  local at = 2 * count
  fields[at + 1], fields[at + 2], fields[at + 3], fields[at + 4], fields[at + 5] =
    'l', 'v', 's', 'f', 'fc'
  local values = read_fields(key, fields)
  local lineage, version, seeded, checked, claimed =
    values[at + 1], values[at + 2], values[at + 3] or ',', values[at + 4], values[at + 5]
  if not lineage or not version then
    return nil, {-1} -- UNSEEDED
  end
  local mark = redis.call('GET', high_water)
  if mark then
    local mark_l, mark_v = string.match(mark, '^(%d+) (%d+)$')
    if mark_l ~= lineage or tonumber(mark_v) > tonumber(version) then
      return nil, {-1} -- UNSEEDED
    end
  end
  for k = 1, count do
    if not string.find(seeded, ',' .. kinds[k].spec.name .. ',', 1, true)
        or not values[2 * k - 1] or not values[2 * k] then
      return nil, {-1} -- UNSEEDED
    end
  end
  local check = 0
  local now = redis_time()
  local unchecked = now - (tonumber(checked) or 0)
  if unchecked > CHECK_EVERY_MS and (tonumber(claimed) or 0) <= now then
    if unchecked > 2 * CHECK_EVERY_MS then
      redis.call('HSET', key, 'fc', now + 2 * CHECK_EVERY_MS)
      return nil, {-2} -- STALE
    end
    redis.call('HSET', key, 'fc', now + CHECK_EVERY_MS)
    check = 1
  elseif unchecked > 2 * CHECK_EVERY_MS then
    return nil, {-3} -- WAIT
  end
  return stored_integer(key, 'l', lineage), stored_integer(key, 'v', version), check, values
end

-- Whether a change made in lineage `made_l` while its version was `made_v`
-- is part of the state Redis holds at (l, v): a change the source holds
-- for good (lineage 0), made in this lineage and not rolled back since, or
-- part of a state this lineage descends from.
local function includes(key, l, v, made_l, made_v)
  if made_l == 0 then
    return true
  end
  if l == made_l then
    return v >= made_v
  end
  local origins = redis.call('HGET', key, 'a') or ''
  for origin_l, origin_v in string.gmatch(origins, '(%d+)@(%d+)') do
    if tonumber(origin_l) == made_l and tonumber(origin_v) > made_v then
      return true
    end
  end
  return false
end

-- Loads each kind's balance into kind.n and kind.r, with a due refill
-- applied: topped up to capacity (never lowered) and refilled at `t`. A kind
-- never seen starts at its initial balance, refilled at kind.born or else at
-- `t`. kind.new_n and kind.new_r tell save() which fields changed;
-- kind.marked whether the hash holds the kind's p:<kind> field (Redis
-- holding the truth). `values`, if given, are the fields already read, in
-- the order load() reads them: each kind's n and r, then (Redis holding
-- the truth) each kind's p.
local function load(key, kinds, t, values)
  local count = #kinds
  if not values then
    local fields
    if count == 1 then
      fields = kinds[1].spec.fields
    else
      fields = {}
      for k = 1, count do
        local spec = kinds[k].spec
        fields[2 * k - 1] = spec.n_field
        fields[2 * k] = spec.r_field
        if REDIS_HOLDS_THE_TRUTH then
          fields[2 * count + k] = spec.p_field
        end
      end
    end
    values = read_fields(key, fields)
  end
  for k = 1, count do
    local kind = kinds[k]
    local spec = kind.spec
    kind.marked = REDIS_HOLDS_THE_TRUTH and values[2 * count + k] ~= false
    local n, r = values[2 * k - 1], values[2 * k]
    if not n and not r then
      kind.n, kind.r = tonumber(spec.initial), kind.born or t
      kind.new_n, kind.new_r = true, true
    else
      -- A balance is an integer from 0 to 2^32 - 1, a refill a
      -- non-negative integer. (Checked on the numbers: a pattern match per
      -- field costs every charge more than the arithmetic. A value written
      -- in another notation, '1e3', passes as the number it is.)
      local number, last = tonumber(n), tonumber(r)
      if not number or number < 0 or number % 1 ~= 0 then
        not_a_number(key, spec.n_field, n)
      end
      if not last or last < 0 or last % 1 ~= 0 then
        not_a_number(key, spec.r_field, r)
      end
      if number > MAX_BALANCE then
        corrupt(key .. ' field ' .. spec.n_field .. ' holds ' .. n .. ', above 2^32 - 1')
      end
      kind.n, kind.r = number, last
    end
    local due = cutoff(spec, t)
    if due and kind.r <= due then
      kind.n, kind.r = math.max(kind.n, spec.capacity), t
      kind.new_n, kind.new_r = true, true
    end
  end
end

-- Writes the fields that changed (listed in a table the next decision of
-- the call reuses), then decides when the hash expires:
-- - at least `idle_ttl` ms after a refill (a new kind, a due refill), never
--   shortened (another kind of the same user may need longer): by then a
--   refill is due anyway, so forgetting the user gives back nothing they had
--   not coming. Active users are refilled, and so kept, every period; Redis
--   memory follows them.
-- - When Redis holds the truth, never while forgetting the user would change
--   a kind's balance. A forgotten user comes back as a new one, at the
--   initial balance; a user kept instead would have had a refill by then:
--   topped up to capacity, never lowered. The two agree only when the
--   initial balance is the capacity and the balance is not above it. The
--   kind's p:<kind> field tells the calls that do not carry it. It is read
--   (load() sets kind.marked), never inferred: written when the kind must
--   be kept and is not marked, dropped when it is marked and need not be.
local save_fields = {}
local function save(key, kinds, idle_ttl)
  local fields, count = save_fields, 0
  local released, refilled, kept = false, false, false
  for k = 1, #kinds do
    local kind = kinds[k]
    local spec = kind.spec
    if kind.new_n then
      fields[count + 1], fields[count + 2], count = spec.n_field, kind.n, count + 2
      if REDIS_HOLDS_THE_TRUTH then
        local keep = spec.kept or kind.n > spec.capacity
        if keep and not kind.marked then
          fields[count + 1], fields[count + 2], count = spec.p_field, 1, count + 2
          kept = true
        elseif kind.marked and not keep then
          released = released or {}
          released[#released + 1] = spec.p_field
        end
      end
    end
    if kind.new_r then
      fields[count + 1], fields[count + 2], count = spec.r_field, kind.r, count + 2
      refilled = true
    end
  end
  -- The expiry the hash had before this write (read first: -2, no hash,
  -- tells a new user's, which no other kind keeps).
  local ttl = nil
  if not kept and (refilled or released) then
    ttl = redis.call('PTTL', key)
  end
  if count > 0 then
    redis.call('HSET', key, unpack(fields, 1, count))
  end
  if released then
    redis.call('HDEL', key, unpack(released))
  end
  if kept then
    redis.call('PERSIST', key)
  elseif ttl then
    local keep = false
    if ttl == -1 and REDIS_HOLDS_THE_TRUTH then
      -- A hash that a kind not in this call may keep.
      for _, field in ipairs(redis.call('HKEYS', key)) do
        keep = keep or string.sub(field, 1, 2) == 'p:'
      end
    end
    if not keep and ttl < tonumber(idle_ttl) then
      redis.call('PEXPIRE', key, idle_ttl)
    end
  end
end

-- The reply tail every script ends with: remaining and last refill per kind,
-- in the order of the request.
local function balances_reply(reply, kinds)
  local at = #reply
  for k = 1, #kinds do
    reply[at + 2 * k - 1] = kinds[k].n
    reply[at + 2 * k] = kinds[k].r
  end
  return reply
end

-- An idempotency key's record, or nil when absent: {expires = the instant
-- (Unix ms) it stops counting, finished = whether its request finished,
-- fingerprint = the request it served, charge = the id of the charge that
-- paid for it ('' for an adjustment), answer = an adjustment's first
-- answer, ' <remaining> <last refill>' per kind, or ''}. Stored as the
-- string '<expires> <R|D> <fingerprint>[#<charge>][ <answer>]': R while the
-- request runs, D once done. The charge id binds the record to its charge:
-- the key may expire and serve a new request, and a late refund or finish
-- of the old charge must leave the new request's record alone.
local function idempotency_record(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if not ok then
    corrupt(key .. ' is not an idempotency key written by tower-tickets')
  end
  if not value then
    return nil
  end
  local expires, state, fingerprint, charge, answer =
    string.match(value, '^(%d+) ([RD]) ([%w%-_]*)#?(%d*)([%d ]*)$')
  if not expires then
    corrupt(key .. ' holds ' .. string.format('%q', value) ..
      ', not an idempotency key written by tower-tickets')
  end
  return {expires = tonumber(expires), finished = state == 'D', fingerprint = fingerprint,
    charge = charge, answer = answer}
end
