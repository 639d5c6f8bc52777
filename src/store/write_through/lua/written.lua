-- written: forget the pending changes that a Firestore write covered,
-- unless more were counted since its snapshot.
--
-- KEYS[1] the user's pending counter.
-- ARGV[1] the counter the write's snapshot saw.
-- Reply: 1 forgotten, 0 kept.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
