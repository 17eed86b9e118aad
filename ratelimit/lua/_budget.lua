-- Budgets: money, beside the lines' tokens (ratelimit.limiter.Budgets). A request reserves its
-- worst case at admission from every budget it falls under, in the same step that checks them,
-- and settlement replaces the reservation with what it cost: so concurrent requests can never
-- spend past a budget together.
--
-- Each budget period is one hash (rl:{<its key's or group's line>}:budget:<period start>):
--   spent, reserved   integer micro-dollars
--   init              the Redis primary it was built on (_primary.lua), once built: a period
--                     never seen, lost with Redis's data, or built on another primary (which may
--                     have lost its last reservations and settlements) is built from the
--                     database first (the caller answers 'unknown')
--   r:<request id>    micro-dollars that request reserved, until it settles
-- Its keys are KEYS[first .. first + n - 1].

local function budget_built(k)
  return redis.call('HGET', k, 'init') == primary_id()
end

-- Reserve `amount` for request `id` from every budget (limits[i], ttls[i]: its hard maximum and
-- how long its hash is kept). One already held by the request stands (a delivery repeated).
-- Returns nil when reserved, else {'unknown', i, 0} or {'over', i, left in micro-dollars}.
local function budget_reserve(first, id, amount, limits, ttls)
  local n = #limits
  for i = 1, n do
    if not budget_built(KEYS[first + i - 1]) then return {'unknown', tostring(i), '0'} end
  end
  for i = 1, n do
    local k = KEYS[first + i - 1]
    if redis.call('HEXISTS', k, 'r:' .. id) == 0 then
      local v = redis.call('HMGET', k, 'spent', 'reserved')
      local left = limits[i] - (tonumber(v[1]) or 0) - (tonumber(v[2]) or 0)
      if amount > left then return {'over', tostring(i), string.format('%d', left)} end
    end
  end
  for i = 1, n do
    local k = KEYS[first + i - 1]
    if redis.call('HSETNX', k, 'r:' .. id, amount) == 1 then
      redis.call('HINCRBY', k, 'reserved', amount)
    end
    redis.call('EXPIRE', k, ttls[i])
  end
  return nil
end

-- Settle request `id` in n budgets: its reservation replaced by `charge`. Only the first
-- settlement counts (a repeated one finds no reservation). Returns 1 if it settled anything.
local function budget_settle(first, n, id, charge)
  local settled = 0
  for i = 1, n do
    local k = KEYS[first + i - 1]
    local held = redis.call('HGET', k, 'r:' .. id)
    if held then
      redis.call('HDEL', k, 'r:' .. id)
      redis.call('HINCRBY', k, 'reserved', -tonumber(held))
      redis.call('HINCRBY', k, 'spent', charge)
      settled = 1
    end
  end
  return settled
end

-- Budget arguments from ARGV[at]: amount, n, then n pairs of limit and ttl. Returns amount,
-- limits, ttls (nil when ARGV[at] is empty: no budget).
local function budget_args(at)
  if (ARGV[at] or '') == '' then return nil end
  local amount, n = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local limits, ttls = {}, {}
  for i = 1, n do
    limits[i] = tonumber(ARGV[at + 2 * i])
    ttls[i] = tonumber(ARGV[at + 2 * i + 1])
  end
  return amount, limits, ttls
end
