-- forget: drop Redis's state of a user whose state in the source somebody
-- else edited or deleted (the source's change feed says so), unless Redis
-- holds a state seeded from that very edit (its origins name it: another
-- instance reloaded it first). The next request then loads the edit.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key;
-- KEYS[3] the user's high-water key.
-- ARGV[1] the edit's point as 'lineage@version', or '' for a deletion.
-- Reply: {1} dropped, {0} kept.

local origins = redis.call('HGET', KEYS[1], 'a')
if ARGV[1] ~= '' and origins
    and string.find(' ' .. origins .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then
  return {0}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {1}
