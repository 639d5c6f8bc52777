-- mark: count one more change of the user that Firestore may not hold yet.
-- The counter has no TTL: it lasts until a write covers it.
--
-- KEYS[1] the user's balances hash; KEYS[2] the user's pending counter.
-- Reply: the counter, or 0 (nothing counted) when the hash holds nothing
--        seeded from Firestore.

if redis.call('HEXISTS', KEYS[1], 'v') == 0 then
  return 0
end
return redis.call('INCR', KEYS[2])
