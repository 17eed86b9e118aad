-- The lease of one attempt of a running request: the key balancer:{leases}:<request id>:<token>
-- lives as long as that attempt's worker renews it. Each attempt has a key of its own, so one
-- attempt's lease never stands in another's way.
-- KEYS[1]: the attempt's lease key
-- ARGV: op, seconds
--   op "renew": the attempt is alive and making progress: its lease lasts `seconds` more; refused
--               when the request was taken from it (its tombstone).
--   op "lose":  the request is taken from the attempt (its lease had ended): a tombstone for
--               `seconds`, so a late renewal learns it lost.
-- Returns {1} when done, {0} when refused.
local op, ms = ARGV[1], math.floor(tonumber(ARGV[2]) * 1000)
if op == 'renew' then
  if redis.call('GET', KEYS[1]) == 'lost' then return {0} end
  redis.call('SET', KEYS[1], 'live', 'PX', ms)
  return {1}
end
if op == 'lose' then
  redis.call('SET', KEYS[1], 'lost', 'PX', ms)
  return {1}
end
return redis.error_reply('unknown op ' .. tostring(op))
