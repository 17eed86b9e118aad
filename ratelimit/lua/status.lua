-- A read of one line for /api/v1/queues: levels now, counts, and the wait a new request of the
-- given cost would face behind everything already waiting (ignoring concurrency and masks; on a
-- group's line, against the deployments not cooling down, their rates pooled).
-- ARGV: input_tokens, output_tokens of a typical new request
-- Returns {waiting, in_flight, levels "req,tok,in,out" ("" = unlimited), estimated_wait_s,
--          granted, wakes, expired, limits in force per minute "req,tok,in,out" (the quota's,
--          or a lower one the provider reported; before the margin), then one entry per
--          deployment of a group's line:
--          "id|in_flight|levels|limits in force|cooling_s|strikes|fault|granted|latency_s",
--          then one per flow (client key) waiting or granted in the last minute:
--          "f|flow|waiting|share of the tokens granted in the last minute|grants|wait p50 s|wait max s"}
local tin, tout = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_s()
-- A read only: lost leases are freed by the writes (acquire) and by the tend's watch.
local sum = redis.call('HMGET', K_SUM, 'n', 'in', 'out')
local n, sin, sout = tonumber(sum[1]) or 0, tonumber(sum[2]) or 0, tonumber(sum[3]) or 0
local need = {req = n + 1, tok = sin + sout + tin + tout, ['in'] = sin + tin, out = sout + tout}

local function describe(dep)
  local cfg, lim = load_cfg(dep)
  local lv = load_levels(dep, lim, now, true)
  local levels, in_force = {}, {}
  for _, d in ipairs(DIMS) do
    local l = lim[d]
    levels[#levels + 1] = l and fmt(lv[d]) or ''
    in_force[#in_force + 1] = l and fmt(l.per_min) or ''
  end
  return lim, lv, table.concat(levels, ','), table.concat(in_force, ',')
end

local deps, grouped = deployments()
local in_flight, wait, extra = 0, 0, {}
local pooled = {}  -- per dimension: {rate, level}, false once a deployment is unlimited in it
local soonest = nil  -- the earliest end of a cooldown, when every deployment is cooling
local open = 0
local levels, in_force = ',,,', ',,,'
for _, dep in ipairs(deps) do
  local fly = redis.call('ZCOUNT', dep.fly, '(' .. fmt(now), '+inf')  -- live leases only
  in_flight = in_flight + fly
  local lim, lv, lv_s, force_s = describe(dep)
  local cool_in = 0
  if grouped then
    local st = redis.call('HMGET', dep.st, 'cool_until', 'strikes', 'fault', 'n', 'lat')
    cool_in = math.max(0, (tonumber(st[1] or '') or 0) - now)
    extra[#extra + 1] = table.concat({dep.id, tostring(fly), lv_s, force_s, fmt(cool_in), st[2] or '0',
      st[3] or '', st[4] or '0', st[5] or ''}, '|')
  else
    levels, in_force = lv_s, force_s
  end
  if cool_in > 0 then
    if soonest == nil or cool_in < soonest then soonest = cool_in end
  else
    open = open + 1
    pool_add(pooled, lim, lv)
  end
end
if open == 0 and soonest then
  wait = soonest
else
  wait = pool_wait(pooled, need)
end
local st = redis.call('HMGET', K_STATS, 'granted', 'wakes', 'expired')
local out = {tostring(redis.call('ZCARD', K_LINE)), tostring(in_flight), levels, fmt(wait), st[1] or '0',
             st[2] or '0', st[3] or '0', in_force}
for _, e in ipairs(extra) do out[#out + 1] = e end
-- Flows: waiting now, and what they were granted over the last minute (newest first in the log).
local flows, total = {}, 0
local fw = redis.call('HGETALL', K_FW)
for i = 1, #fw, 2 do flows[fw[i]] = {waiting = tonumber(fw[i + 1]) or 0, tokens = 0, waits = {}} end
-- Newest first, read a page at a time up to the first entry older than a minute.
local page, from, done = 500, 0, false
while not done do
  local entries = redis.call('LRANGE', K_FLOG, from, from + page - 1)
  for _, entry in ipairs(entries) do
    local f = split(entry)
    local at = tonumber(f[4]) or 0
    if at < now - FLOG_SECONDS then
      done = true
      break
    end
    local flow = flows[f[1]] or {waiting = 0, tokens = 0, waits = {}}
    flows[f[1]] = flow
    local tokens = tonumber(f[2]) or 0
    flow.tokens = flow.tokens + tokens
    total = total + tokens
    flow.waits[#flow.waits + 1] = tonumber(f[3]) or 0
  end
  if #entries < page then done = true end
  from = from + page
end
for name, flow in pairs(flows) do
  table.sort(flow.waits)
  local n = #flow.waits
  local p50 = n > 0 and flow.waits[math.floor((n - 1) / 2) + 1] or 0
  local most = n > 0 and flow.waits[n] or 0
  out[#out + 1] = table.concat({'f', name, tostring(flow.waiting), fmt(total > 0 and flow.tokens / total or 0),
    tostring(n), fmt(p50), fmt(most)}, '|')
end
return out
