-- settle: what a write round did, told to Redis. Releases the round's
-- lease, and:
-- - 'written': the marks the round's snapshot saw are covered; the pending
--   key goes once every mark is; the high-water key moves up to the
--   written state (so that a hash restored from an older dump is stale);
--   the state is checked against the source as of now (the write was
--   conditioned on what the source held: no edit came before it); the
--   unwritten charges the snapshot held (`ut`) are written now;
-- - 'refused': the source holds a state this lineage does not descend
--   from. Unless that state was taken from this very Redis history (a
--   round whose lease ran out wrote it: its version is among those the
--   hash took), Redis's state is dropped: the next request reloads the user
--   from the source;
-- - 'failed': the source did not answer; the marks stay pending;
-- - 'discard': drop Redis's state (a change the source did not take must
--   not stay in Redis alone).
-- Nothing happens to a hash of another lineage (reloaded meanwhile); a
-- pending key whose hash is gone indexes nothing and goes.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key;
-- KEYS[3] the user's high-water key.
-- ARGV: the round's lineage, its version, the marks its snapshot saw, the
--       outcome, then for 'refused' the stored lineage and version ('' for
--       no document).
-- Reply: {1} Redis keeps the state, {0} it does not hold it (any more).

local key = KEYS[1]
local stored = redis.call('HMGET', key, 'l', 'v', 'kv', 'm', 'c', 'h', 'ut')
if stored[1] ~= ARGV[1] then
  if not stored[1] then
    redis.call('DEL', KEYS[2])
  end
  return {0}
end
if stored[3] == ARGV[2] then
  redis.call('HDEL', key, 'k', 'kv')
end
local outcome = ARGV[4]
if outcome == 'refused' then
  if ARGV[5] == stored[1] and string.find(' ' .. (stored[6] or ''), ' ' .. ARGV[6] .. ' ', 1, true) then
    outcome = 'written'
  else
    outcome = 'discard'
  end
end
if outcome == 'discard' then
  redis.call('DEL', key, KEYS[2], KEYS[3])
  return {0}
end
if outcome == 'written' then
  local mark = redis.call('GET', KEYS[3])
  local mark_v = mark and tonumber(string.match(mark, ' (%d+)$'))
  if not mark_v or tonumber(ARGV[2]) > mark_v then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then
      redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[2], 'PX', ttl)
    else
      redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
    end
  end
  local covered = math.max(tonumber(stored[5]) or 0, tonumber(ARGV[3]))
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('HSET', key, 'c', covered, 'f', now)
  -- (A round whose lease ran out finds a later snapshot's `ut`: that
  -- round's settle accounts for it.)
  if stored[3] == ARGV[2] then
    for name, amount in string.gmatch(stored[7] or '', '(%S+)=(%d+)') do
      local unwritten = tonumber(redis.call('HGET', key, 'u:' .. name)) or 0
      redis.call('HSET', key, 'u:' .. name, math.max(0, unwritten - tonumber(amount)))
    end
  end
  if covered >= (tonumber(stored[4]) or 0) then
    redis.call('DEL', KEYS[2])
  end
end
return {1}
