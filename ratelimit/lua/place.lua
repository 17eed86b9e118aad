-- Where a waiting request stands, for its client: its position in the line (0 = next) and the
-- seconds until it may start, estimated as status estimates a new request's wait — from the
-- cost of everything ahead of it and its own against the line's levels and rates (ignoring
-- concurrency and masks; on a group's line, the deployments not cooling down, their rates
-- pooled). The costs of the first AHEAD_READ ahead are read; the rest are taken at their average.
-- A read only.
-- ARGV: id
-- Returns {position, estimated_wait_s}, or {'', ''} when it is not waiting in this line
local AHEAD_READ = 2000
local id = ARGV[1]
local position = redis.call('ZRANK', K_LINE, id)
if not position then return {'', ''} end
local now = now_s()
local need = {req = 0, tok = 0, ['in'] = 0, out = 0}
local read = redis.call('ZRANGE', K_LINE, math.max(0, position - AHEAD_READ), position)
for _, member in ipairs(read) do
  local cost = get_cost(member)
  if cost then
    for _, d in ipairs(DIMS) do need[d] = need[d] + cost[d] end
  end
end
local unread = position + 1 - #read
if unread > 0 then
  for _, d in ipairs(DIMS) do need[d] = need[d] + need[d] / #read * unread end
end
local deps, grouped = deployments()
local pooled, soonest, open = {}, nil, 0
for _, dep in ipairs(deps) do
  local cool_in = 0
  if grouped then cool_in = math.max(0, (tonumber(redis.call('HGET', dep.st, 'cool_until') or '') or 0) - now) end
  if cool_in > 0 then
    if soonest == nil or cool_in < soonest then soonest = cool_in end
  else
    open = open + 1
    local _, lim = load_cfg(dep)
    pool_add(pooled, lim, load_levels(dep, lim, now, true))
  end
end
local wait = 0
if open == 0 and soonest then
  wait = soonest + pool_wait(pooled, need)
else
  wait = pool_wait(pooled, need)
end
return {tostring(position), fmt(wait)}
