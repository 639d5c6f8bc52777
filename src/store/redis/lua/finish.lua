-- finish: records that the request an idempotency key served finished
-- and keeps its charge (or, in front of a source of truth, that its
-- adjustment is written), so that a retry is told it was already processed
-- rather than still in progress. A key Redis no longer holds (expired,
-- refunded, lost) stays forgotten.
--
-- A key that serves another charge now (it expired, and a new request
-- took it) is left alone.
--
-- KEYS[1] the idempotency key.
-- ARGV[1] the id of the charge whose request finished ('' for an
--         adjustment).
-- Reply: {1} when marked, {0} when absent, already finished or another's.

local record = idempotency_record(KEYS[1])
-- (A record without a charge id is an adjustment's, or a charge's written
-- before ids were kept.)
if not record or record.finished or (record.charge ~= '' and record.charge ~= ARGV[1]) then
  return {0}
end
local charge = record.charge ~= '' and '#' .. record.charge or ''
redis.call('SET', KEYS[1],
  record.expires .. ' D ' .. record.fingerprint .. charge .. record.answer, 'KEEPTTL')
return {1}
