-- mark: count one more change of the user that the source may not hold yet
-- (async mode, or a sync write that failed). The marks live in the user's
-- hash (`m`, never reset within a lineage, against `c`, the marks a write
-- covered); the pending key only indexes the user for the recovery scan,
-- and lasts until a write covers every mark.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key.
-- ARGV[1] the lineage the change was made in.
-- Reply: {the marks so far}, or {0} (nothing counted) when Redis no longer
--        holds that lineage.

if redis.call('HGET', KEYS[1], 'l') ~= ARGV[1] then
  return {0}
end
local marks = redis.call('HINCRBY', KEYS[1], 'm', 1)
redis.call('SET', KEYS[2], 1)
return {marks}
