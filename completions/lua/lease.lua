-- A running attempt's lease: the key balancer:{leases}:<request id> holds the fencing token of the
-- attempt that owns the request, and lives as long as that attempt's worker renews it.
-- KEYS[1]: the lease key
-- ARGV: op, token, seconds
--   op "renew": the attempt of `token` is alive and making progress: its lease lasts `seconds`
--               more. Taken when missing (first renewal, or Redis lost its data) or when it is
--               another attempt's tombstone; refused when it is this attempt's tombstone or a
--               live lease of another attempt (this one has lost the request).
--   op "lose":  the request was taken from the attempt of `token` (its lease had ended): a
--               tombstone for `seconds`, so a late renewal learns it lost. Refused when the key
--               holds another live attempt's lease.
-- Returns {1} when done, {0} when refused.
local op, token, seconds = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ms = math.floor(seconds * 1000)
local held = redis.call('GET', KEYS[1])
local tomb = 'lost:' .. token
if op == 'renew' then
  if held == tomb then return {0} end
  if held and held ~= token and string.sub(held, 1, 5) ~= 'lost:' then return {0} end
  redis.call('SET', KEYS[1], token, 'PX', ms)
  return {1}
end
if op == 'lose' then
  if held and held ~= token and string.sub(held, 1, 5) ~= 'lost:' then return {0} end
  redis.call('SET', KEYS[1], tomb, 'PX', ms)
  return {1}
end
return redis.error_reply('unknown op ' .. tostring(op))
