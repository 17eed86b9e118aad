-- Let the head of the line start if a deployment's buckets hold the head's cost and a slot of it
-- is free (a line without deployments is its own; see _lib.lua).
-- ARGV: id (the request a task was published for; "" = whichever is head, for wake-ups),
--       lease seconds when the quota names none (how long a slot is held, unless renewed, before
--       it is presumed lost), token (the fencing token of the attempt this grant is for: only its
--       settlement and renewals act on the reservation), wake_at (for a wake-up: the `at` it was
--       published with; "" otherwise), settling (seconds a deployment with a concurrency limit
--       takes nothing new once Redis may have lost some of its slots: while the calls that hold
--       them renew them, see wait_for; "" = 0)
-- Returns {outcome, id, publish_wake, wake_in_s, deployment, wake_at, expired ids...} where
-- outcome is
--   "go"     id may start now on `deployment` ("" for a line without deployments; "-" when no
--            deployment may take it any more): its cost was taken there and it holds a slot;
--            the caller must settle it
--   "wait"   id is head but must wait; publish_wake=1: the caller publishes the wake-up
--   "parked" id is waiting behind the head: the head's wake-ups will reach it in turn
--   "gone"   id is not in the line (cancelled, expired, started) or the line is empty
local want, lease, token, wake_at = ARGV[1], tonumber(ARGV[2]), ARGV[3] or '', ARGV[4] or ''
local settling = tonumber(ARGV[5] or '') or 0
local now = now_s()
if want == '' then wake_served(wake_at) end
local expired = expire(now)
prune_leases(now)
promote(now)
local function reply(outcome, id, wake, dep)
  wake = wake or {0, 0, ''}
  local r = {outcome, id or '', tostring(wake[1]), fmt(wake[2]), dep or '', wake[3]}
  for _, e in ipairs(expired) do r[#r + 1] = e end
  return r
end
local h = head()
if not h then return reply('gone', want) end
if want ~= '' and want ~= h then
  if redis.call('ZSCORE', K_LINE, want) then return reply('parked', want) end
  return reply('gone', want)
end
local cost, nb, mask, meta = get_cost(h)
meta = meta or {flow = '', weight = 1, rank = 1, arrival = ''}
local ticket = redis.call('ZSCORE', K_LINE, h)
local pick, wait = choose(cost, nb, mask, now, settling)
if wait and wait > 0 then
  return reply('wait', h, schedule(wait, now))
end
local dep_id = '-'
if pick then
  local dep, lim, lv = pick.dep, pick.lim, pick.lv
  dep_id = dep.id
  -- Go: how long was it ready before now? (the grant lag, for the benchmark and metrics)
  local ready = tonumber(redis.call('GET', K_HS) or '') or now
  ready = math.max(ready, nb)
  for _, d in ipairs(DIMS) do
    local l = lim[d]
    if l and lv[d] < l.cap then
      ready = math.max(ready, now - (lv[d] - cost[d]) / l.rate)
    end
  end
  log_push(K_LAG, fmt(math.max(0, now - ready)) .. '@' .. fmt(now), now, AUDIT_SECONDS, LAG_KEEP)
  for _, d in ipairs(DIMS) do
    if lv[d] then lv[d] = lv[d] - cost[d] end
  end
  save_levels(dep, lv, now)
  redis.call('ZADD', dep.fly, now + (pick.cfg.lease or lease), h)
  if dep.id ~= '' then redis.call('HINCRBY', dep.st, 'n', 1) end
  if pick.probing then redis.call('HSET', dep.st, 'probe', h) end
else
  -- No deployment of the line may take it (those it could use left the group): it is let go
  -- with nothing reserved, and the caller fails it with the reason.
  cost = {req = 0, tok = 0, ['in'] = 0, out = 0}
end
local arrival = meta.arrival ~= '' and meta.arrival or ticket
log_push(K_GRANTS, arrival .. '@' .. fmt(now), now, AUDIT_SECONDS, LAG_KEEP)
if meta.flow ~= '' then
  -- Who got how much (tokens reserved) after how long, for the flows' shares and waits.
  local at = tonumber(meta.arrival)
  local waited = (at and at > 1e12) and math.max(0, now - at / 1e6) or 0  -- arrival tickets are µs
  log_push(K_FLOG, meta.flow .. ',' .. (cost.tok or 0) .. ',' .. fmt(waited) .. ',' .. fmt(now), now, FLOG_SECONDS,
    FLOG_KEEP)
end
if redis.call('HGET', K_CFG, 'sched') == 'fair' then
  -- The virtual time is the start tag of the request last granted.
  local tag = tonumber(ticket) - (meta.rank - 1) * CLASS_STEP
  local vt = tonumber(redis.call('HGET', K_FQ, 'vt') or '') or 0
  if tag > vt then redis.call('HSET', K_FQ, 'vt', fmt(tag)) end
end
remove(h)
redis.call('HSET', K_RES, h, cost.req .. ',' .. cost.tok .. ',' .. cost['in'] .. ',' .. cost.out .. ',' .. ticket
  .. ',' .. dep_id .. ',' .. mask .. ',' .. meta_str(meta) .. ',' .. token)
redis.call('HINCRBY', K_STATS, 'granted', 1)
redis.call('SET', K_HS, fmt(now))
return reply('go', h, wake_head(now), dep_id)
