-- finish: records that the request an idempotency key served finished
-- and keeps its charge (or, in front of a source of truth, that its
-- adjustment is written), so that a retry is told it was already processed
-- rather than still in progress. A key Redis no longer holds (expired,
-- refunded, lost) stays forgotten.
--
-- KEYS[1] the idempotency key.
-- Reply: {1} when marked, {0} when absent or already finished.

local record = idempotency_record(KEYS[1])
if not record or record.finished then
  return {0}
end
redis.call('SET', KEYS[1], record.expires .. ' D ' .. record.fingerprint .. record.answer, 'KEEPTTL')
return {1}
