-- mark: count one more change of the user that the source may not hold yet
-- (async mode, or a sync write that failed). The marks live in the user's
-- hash (`m`, never reset within a lineage, against `c`, the marks a write
-- covered); the pending key only indexes the user for the recovery scan,
-- and lasts until a write covers every mark.
--
-- A change made in another lineage than the one Redis now holds counts
-- only if that lineage carried it over: an edit's check reseeds the user
-- with the charges not written yet on top, naming the state they were made
-- on among its origins (see check.lua). A change lost with a dropped or
-- reloaded state does not count.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending key.
-- ARGV[1], ARGV[2] the lineage and version the change was made at.
-- Reply: {the marks so far}, or {0} (nothing counted) when Redis no longer
--        holds the change.

local held = redis.call('HMGET', KEYS[1], 'l', 'a')
if not held[1] then
  return {0}
end
if held[1] ~= ARGV[1] then
  local carried = false
  for lineage, version in string.gmatch(held[2] or '', '(%d+)@(%d+)') do
    if lineage == ARGV[1] and tonumber(version) > tonumber(ARGV[2]) then
      carried = true
    end
  end
  if not carried then
    return {0}
  end
end
local marks = redis.call('HINCRBY', KEYS[1], 'm', 1)
redis.call('SET', KEYS[2], 1)
return {marks}
