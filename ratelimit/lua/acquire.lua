-- Let the head of the line start if every bucket holds its cost and a slot is free.
-- ARGV: id (the request a task was published for; "" = whichever is head, for wake-ups),
--       lease seconds when the quota names none (how long a slot is held before it is presumed lost)
-- Returns {outcome, id, publish_wake, wake_in_s, expired ids...} where outcome is
--   "go"     id may start now: its cost was taken and it holds a slot; the caller must settle it
--   "wait"   id is head but must wait; publish_wake=1: the caller publishes the wake-up
--   "parked" id is waiting behind the head: the head's wake-ups will reach it in turn
--   "gone"   id is not in the line (cancelled, expired, started) or the line is empty
local want, lease = ARGV[1], tonumber(ARGV[2])
local now = now_s()
local expired = expire(now)
prune_leases(now)
local function reply(outcome, id, publish, wait)
  local r = {outcome, id or '', tostring(publish or 0), fmt(wait or 0)}
  for _, e in ipairs(expired) do r[#r + 1] = e end
  return r
end
local h = head()
if not h then return reply('gone', want) end
if want ~= '' and want ~= h then
  if redis.call('ZSCORE', K_LINE, want) then return reply('parked', want) end
  return reply('gone', want)
end
local cfg, lim = load_cfg()
local lv = load_levels(lim, now)
local cost, nb = get_cost(h)
local ticket = redis.call('ZSCORE', K_LINE, h)
local wait = wait_for(cost, nb, cfg, lim, lv, now)
if wait > 0 then
  return reply('wait', h, schedule(wait, now), wait)
end
-- Go: how long was it ready before now? (the grant lag, for the benchmark and metrics)
local ready = tonumber(redis.call('GET', K_HS) or '') or now
ready = math.max(ready, nb)
for _, d in ipairs(DIMS) do
  local l = lim[d]
  if l and lv[d] < l.cap then
    ready = math.max(ready, now - (lv[d] - cost[d]) / l.rate)
  end
end
redis.call('LPUSH', K_LAG, fmt(math.max(0, now - ready)))
redis.call('LTRIM', K_LAG, 0, LAG_KEEP - 1)
redis.call('LPUSH', K_GRANTS, ticket .. '@' .. fmt(now))
redis.call('LTRIM', K_GRANTS, 0, LAG_KEEP - 1)
for _, d in ipairs(DIMS) do
  if lv[d] then lv[d] = lv[d] - cost[d] end
end
save_levels(lv, now)
remove(h)
redis.call('ZADD', K_FLY, now + (cfg.lease or lease), h)
redis.call('HSET', K_RES, h, '1,' .. cost.tok .. ',' .. cost['in'] .. ',' .. cost.out .. ',' .. ticket)
redis.call('HINCRBY', K_STATS, 'granted', 1)
redis.call('SET', K_HS, fmt(now))
local nxt = wake_head(cfg, lim, lv, now)
return reply('go', h, nxt[1], nxt[2])
