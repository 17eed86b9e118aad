-- Take a request's cost from the buckets now, or say how long until they would hold it, without
-- joining the line (for clients that would rather be refused than wait: fail-fast keys).
-- ARGV: id, input_tokens, output_tokens, lease seconds, configured (as enqueue.lua's)
-- Returns {taken (0/1), retry_after_s}; {'-3'} as enqueue.lua's (nothing done)
local id, tin, tout, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] == '1' and redis.call('EXISTS', K_CFG) == 0 then return {'-3'} end
local now = now_s()
local line = dep_keys('')
local cfg, lim = load_cfg(line)
local lv = load_levels(line, lim, now)
local cost = {req = 1, tok = tin + tout, ['in'] = tin, out = tout}
local wait = wait_for(line, cost, 0, cfg, lim, lv, now)
if wait > 0 then return {'0', fmt(wait)} end
for _, d in ipairs(DIMS) do
  if lv[d] then lv[d] = lv[d] - cost[d] end
end
save_levels(line, lv, now)
redis.call('ZADD', K_FLY, now + lease, id)
-- No place in line to go back to (""): it never had one.
redis.call('HSET', K_RES, id, '1,' .. cost.tok .. ',' .. tin .. ',' .. tout .. ',')
redis.call('HINCRBY', K_STATS, 'granted', 1)
return {'1', '0'}
