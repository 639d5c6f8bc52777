-- check: what a read of the source found, told to Redis. Somebody else
-- changed the user when the source holds an edit (a state of no lineage,
-- lineage 0, made straight to the source: the console, another backend)
-- that Redis's state was not seeded from, or no document at all (deleted:
-- the user is new again). Redis's state is then dropped, and the next
-- request loads the source's. Otherwise it is marked checked as of now: a
-- state of another lineage than Redis's is no edit, and the next write
-- round settles which state goes on (the source takes only a state that
-- descends from what it holds).
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key;
-- KEYS[3] the user's high-water key.
-- ARGV[1] the source's point as 'lineage@version', '' for no document, or
--         'unread' when the source did not answer: the state is marked
--         checked all the same, so that the requests waiting for the check
--         go on, deciding on it (the next check is due in a second).
-- Reply: {1} dropped, {0} kept (or nothing held).

local stored = redis.call('HMGET', KEYS[1], 'l', 'a')
if not stored[1] then
  return {0}
end
local edited = ARGV[1] == ''
if string.sub(ARGV[1], 1, 2) == '0@' then
  edited = not string.find(' ' .. (stored[2] or '') .. ' ', ' ' .. ARGV[1] .. ' ', 1, true)
end
if not edited then
  local time = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'f', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
  return {0}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {1}
