-- Budgets outside a line's step (see _budget.lua). KEYS: the budget hashes.
-- ARGV[1] op:
--   "reserve" id, then amount, n, limit/ttl pairs: a request that joins no line (an unlimited
--             model's). Returns {'ok'}, {'unknown', i, 0} or {'over', i, left}.
--   "settle"  id, charge: returns {1} if it settled, {0} if there was nothing to settle.
--   "init"    spent, ttl, then id/amount pairs: build a period from the database's figures,
--             unless it was built meanwhile (on this primary). Returns {1} if built, {0} if it
--             was there.
--   "read"    the figures of each budget: {spent, reserved, open reservations, built (0/1)}...
--   "open"    the ids of the requests holding a reservation of KEYS[1]
local op = ARGV[1]
if op == 'reserve' then
  local amount, limits, ttls = budget_args(3)
  local refused = budget_reserve(1, ARGV[2], amount, limits, ttls)
  return refused or {'ok'}
end
if op == 'settle' then
  return {budget_settle(1, #KEYS, ARGV[2], tonumber(ARGV[3]))}
end
if op == 'init' then
  local k = KEYS[1]
  if budget_built(k) then return {0} end
  redis.call('DEL', k)
  local reserved = 0
  for i = 4, #ARGV, 2 do
    redis.call('HSET', k, 'r:' .. ARGV[i], ARGV[i + 1])
    reserved = reserved + tonumber(ARGV[i + 1])
  end
  redis.call('HSET', k, 'spent', ARGV[2], 'reserved', string.format('%d', reserved), 'init', primary_id())
  redis.call('EXPIRE', k, tonumber(ARGV[3]))
  return {1}
end
if op == 'read' then
  local out = {}
  for i = 1, #KEYS do
    local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
    local open = math.max(redis.call('HLEN', KEYS[i]) - 3, 0)
    out[#out + 1] = {v[1] or '0', v[2] or '0', tostring(open), budget_built(KEYS[i]) and '1' or '0'}
  end
  return out
end
if op == 'open' then
  local out = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 'r:' then out[#out + 1] = string.sub(field, 3) end
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))
