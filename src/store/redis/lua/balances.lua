-- balances: read balances without writing anything; a due refill shows as
-- applied, a user never seen shows their initial balances.
--
-- KEYS[1] the user's balances.
-- ARGV: decision time ('' = Redis TIME), kind count, then per kind: spec.
-- Reply: {remaining, last refill, ...}.

local t = decision_time(ARGV[1])
local kinds = read_kinds(3, tonumber(ARGV[2]), 0)
load(KEYS[1], kinds, t)
return balances_reply({}, kinds)
