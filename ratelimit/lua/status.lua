-- A read of one line for /api/v1/queues: levels now, counts, and the wait a new request of the
-- given cost would face behind everything already waiting (ignoring concurrency).
-- ARGV: input_tokens, output_tokens of a typical new request
-- Returns {waiting, in_flight, levels "req,tok,in,out" ("" = unlimited), estimated_wait_s,
--          granted, wakes, expired, limits in force per minute "req,tok,in,out" (the quota's,
--          or a lower one the provider reported; before the margin)}
local tin, tout = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_s()
prune_leases(now)
local cfg, lim = load_cfg()
local lv = load_levels(lim, now)
local sum = redis.call('HMGET', K_SUM, 'n', 'in', 'out')
local n, sin, sout = tonumber(sum[1]) or 0, tonumber(sum[2]) or 0, tonumber(sum[3]) or 0
local need = {req = n + 1, tok = sin + sout + tin + tout, ['in'] = sin + tin, out = sout + tout}
local wait = 0
local levels = {}
local in_force = {}
for _, d in ipairs(DIMS) do
  local l = lim[d]
  if l then
    in_force[#in_force + 1] = fmt(l.per_min)
    levels[#levels + 1] = fmt(lv[d])
    if lv[d] < need[d] then wait = math.max(wait, (need[d] - lv[d]) / l.rate) end
  else
    levels[#levels + 1] = ''
    in_force[#in_force + 1] = ''
  end
end
local st = redis.call('HMGET', K_STATS, 'granted', 'wakes', 'expired')
return {tostring(redis.call('ZCARD', K_LINE)), tostring(redis.call('ZCARD', K_FLY)),
        table.concat(levels, ','), fmt(wait), st[1] or '0', st[2] or '0', st[3] or '0',
        table.concat(in_force, ',')}
