-- Shared prelude, prepended to every script of this folder when it is loaded.
--
-- Every script gets the same KEYS, all of one line (one hash tag, so they live on one Redis
-- Cluster slot):
--   KEYS[1]  cfg    hash   rpm, tpm, itpm, otpm (per minute), conc, burst (s), lease (s),
--                          margin (fraction of each rate held back), margin_s (seconds of refill
--                          taken off each bucket): see load_cfg; aging (s), maxc (the longest
--                          countdown of a wake-up task, s)
--   KEYS[2]  b      hash   bucket levels req, tok, in, out, ts (when they were computed) and rid
--                          (the Redis primary they were computed on: _primary.lua)
--   KEYS[3]  line   zset   request id -> ticket (arrival order: the caller's arrival time, or seq)
--   KEYS[4]  cost   hash   request id -> "input,output,not_before,mask,flow,weight,class,arrival"
--                          (estimated tokens; mask: the deployments it may go to, ids joined by
--                          '|', "" = any; flow: its client key; class: 0 interactive, 1 default,
--                          2 batch; arrival: its arrival ticket)
--   KEYS[5]  dl     zset   request id -> deadline (only requests with max_wait)
--   KEYS[6]  fly    zset   request id -> lease expiry (requests holding a concurrency slot)
--   KEYS[7]  res    hash   request id -> "req,tok,in,out,place,deployment,mask,flow,weight,class,
--                          arrival,token" reserved, until settled (place: its score in line, to go
--                          back to; "" when it never had one; token: the fencing token of the
--                          attempt holding it, whose settlement and renewals alone it accepts)
--   KEYS[8]  wake   string the pending wake-up of the line's head: "time it fires/number"
--   KEYS[9]  seq    string ticket counter, for callers that bring no ticket of their own
--   KEYS[10] sum    hash   n, in, out: totals of the line (for wait estimates)
--   KEYS[11] stats  hash   counters: granted, wakes, expired
--   KEYS[12] hs     string time the current head became head
--   KEYS[13] lag    list   recent grant lags (s): capacity ready -> grant
--   KEYS[14] grants list   recent grants ("ticket@time") and re-entries of retried requests
--                          ("rticket@time"), newest first: an audit of the order
--   KEYS[15] hdr    hash   limits the provider's own rate-limit headers reported (rpm, tpm, itpm,
--                          otpm) and when (at); lower ones override the quota while fresh; and
--                          hold: the time before which nothing starts (a provider's 429 said so)
--
-- Deployments. A model group's line serves several deployments (provider keys, organisations,
-- servers), each with its own quota, buckets, slots and provider-reported limits. The line's cfg
-- then lists them (deps: ids joined by ','; policy; cool, cool_max, fails: the cooldown rule) and
-- each deployment's keys share the line's hash tag: rl:{line}:d:<id>:cfg, b, fly, hdr, and st
-- (its grants n, latency EWMA lat, errs, strikes, cool_until, and probe: the request sent to test
-- it once its cooldown ended). They are built here from the
-- line's prefix rather than passed as KEYS, since the list changes with the registry; being on
-- the line's slot, they stay atomic with it on a Redis Cluster too. Any other line (a model
-- without a group, a key) is its own single deployment on KEYS 1, 2, 6 and 15, as before.
--
-- Order. A request's score in line is its place: within a priority class, its arrival ticket
-- (fifo) or its start tag (fair: start-time fair queuing over the tokens it reserves, one flow
-- per client key, weighted); classes apart by CLASS_STEP, so a higher class goes first (see
-- promote for aging). Fair lines keep their virtual time and each flow's last finish tag in PREFIX..'fq',
-- waiting requests per flow in PREFIX..'fw', and recent grants per flow in PREFIX..'flog'.
-- Times are Redis server time in seconds (redis.call('TIME')), never a client's clock.
-- Numbers go back to the client as strings: Lua would truncate floats to integers.

local K_CFG, K_B, K_LINE, K_COST, K_DL, K_FLY, K_RES, K_WAKE, K_SEQ, K_SUM, K_STATS, K_HS, K_LAG, K_GRANTS, K_HDR =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12],
  KEYS[13], KEYS[14], KEYS[15]
-- Limits reported by the provider's headers stay in force this long after the last report.
local HDR_FRESH = 600

local DIMS = {'req', 'tok', 'in', 'out'}
-- Scores of classes lie this far apart: arrival tickets (microseconds since 1970, ~1.8e15) and
-- start tags stay exact doubles (below 2^53) in all three.
local CLASS_STEP = 4e15
local K_AGE, K_FQ, K_FW, K_FLOG = nil, nil, nil, nil
-- Recent history is kept by time, with a hard cap on its length: the flow log for the last
-- minute (what status reports), the grant audit and grant lags for the last five.
local FLOG_KEEP, FLOG_SECONDS, AUDIT_SECONDS = 20000, 60, 300
local LIMIT_OF = {req = 'rpm', tok = 'tpm', ['in'] = 'itpm', out = 'otpm'}
local LAG_KEEP = 10000

-- Push an entry ("…@time", or for the flow log "…,time") onto a newest-first log, then drop what
-- is older than `seconds` from its tail, a few entries per push (so the work per call stays
-- bounded and the log keeps up), and anything past `keep` entries.
local function log_push(key, entry, now, seconds, keep)
  redis.call('LPUSH', key, entry)
  for _ = 1, 4 do
    local last = redis.call('LINDEX', key, -1)
    local at = last and tonumber(string.match(last, '[@,]([%d%.]+)$'))
    if not at or at >= now - seconds then break end
    redis.call('RPOP', key)
  end
  redis.call('LTRIM', key, 0, keep - 1)
end

local PREFIX = string.sub(K_CFG, 1, -4)  -- 'rl:{line}:'
K_AGE, K_FQ, K_FW, K_FLOG = PREFIX .. 'age', PREFIX .. 'fq', PREFIX .. 'fw', PREFIX .. 'flog'

-- Fields of a comma-separated value (empty ones included).
local function split(v)
  local out, start = {}, 1
  while true do
    local i = string.find(v, ',', start, true)
    if not i then
      out[#out + 1] = string.sub(v, start)
      return out
    end
    out[#out + 1] = string.sub(v, start, i - 1)
    start = i + 1
  end
end

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

-- Quota of the model: cfg fields, and per limited dimension its refill rate (per s) and capacity.
-- A lower limit the provider reported in its headers (fresh) takes the configured one's place.
--
-- The provider's own bucket counts a request when it arrives there, a few milliseconds after our
-- grant, and that delay varies: two grants 1/rate apart can arrive closer together. So each
-- bucket runs with a margin: `margin` of the rate held back (the provider's bucket gains on ours
-- over a long backlog), and `margin_s` seconds of refill taken off the capacity (the provider's
-- bucket is that far ahead of ours even right after an idle spell). The capacity keeps at least
-- half its size, and room for one request. ratelimit.models.effective_bucket is the same rule.
local function load_cfg(dep)
  local raw = redis.call('HGETALL', dep.cfg)
  local cfg = {}
  for i = 1, #raw, 2 do cfg[raw[i]] = tonumber(raw[i + 1]) end
  local hraw = redis.call('HGETALL', dep.hdr)
  local hdr = {}
  for i = 1, #hraw, 2 do hdr[hraw[i]] = tonumber(hraw[i + 1]) end
  local fresh = hdr.at and (now_s() - hdr.at) < HDR_FRESH
  local burst = cfg.burst or 60
  local margin, margin_s = cfg.margin or 0, cfg.margin_s or 0
  cfg.hold = hdr.hold or 0
  local lim = {}
  for _, d in ipairs(DIMS) do
    local per_min = cfg[LIMIT_OF[d]] or 0
    local reported = hdr[LIMIT_OF[d]]
    if fresh and reported and per_min > 0 and reported < per_min then per_min = reported end
    if per_min > 0 then
      local rate = per_min / 60
      local cap = rate * burst
      local floor = cap / 2
      if d == 'req' then floor = math.max(floor, math.min(cap, 1)) end
      lim[d] = {rate = rate * (1 - margin), cap = math.max(cap - rate * margin_s, floor), per_min = per_min}
    end
  end
  return cfg, lim
end

local function save_levels(dep, lv, now)
  local args = {}
  for _, d in ipairs(DIMS) do
    if lv[d] then
      args[#args + 1] = d
      args[#args + 1] = fmt(lv[d])
    end
  end
  args[#args + 1] = 'ts'
  args[#args + 1] = fmt(now)
  args[#args + 1] = 'rid'
  args[#args + 1] = primary_id()
  redis.call('HSET', dep.b, unpack(args))
end

-- Bucket levels refilled continuously up to `now` (a new or re-limited bucket starts full; one
-- saved under another Redis primary starts empty: _primary.lua; one Redis lost with its data is
-- started by restore.lua). Emptied, it is saved at once,
-- so it refills from now on whether or not this call grants anything, unless `reading`
-- (a script that only reads).
local function load_levels(dep, lim, now, reading)
  local raw = redis.call('HMGET', dep.b, 'req', 'tok', 'in', 'out', 'ts', 'rid')
  local ts = tonumber(raw[5])
  local stale = ts ~= nil and raw[6] ~= primary_id()
  local lv = {}
  for i, d in ipairs(DIMS) do
    local l = lim[d]
    if l then
      local v = tonumber(raw[i])
      if stale then
        v = 0
      elseif v == nil or ts == nil then
        v = l.cap
      else
        v = math.min(l.cap, v + math.max(0, now - ts) * l.rate)
      end
      lv[d] = v
    end
  end
  if stale and not reading then
    save_levels(dep, lv, now)
    redis.call('HSET', dep.b, 'fr', fmt(now))  -- see slots_unknown
  end
  return lv
end

-- Whether the deployment's slots may lack some held by calls still running: its bucket was
-- written under another Redis primary (a promoted replica may lack the last grants), or that was
-- found less than a lease ago (`fr`, load_levels), or its bucket is gone altogether (a grant
-- made one, so Redis lost it). Then a running attempt's renewal puts back its slot (renew.lua).
local function slots_unknown(dep, now, lease)
  local raw = redis.call('HMGET', dep.b, 'ts', 'rid', 'fr')
  if raw[1] == false or raw[2] ~= primary_id() then return true end
  local fr = tonumber(raw[3] or '')
  return fr ~= nil and now < fr + lease
end

-- A waiting request's estimated cost, not-before time, mask, and its meta: flow, weight, class
-- (rank) and arrival ticket.
local function get_cost(id)
  local v = redis.call('HGET', K_COST, id)
  if not v then return nil, 0, '', nil end
  local f = split(v)
  local i, o = tonumber(f[1]), tonumber(f[2])
  local meta = {flow = f[5] or '', weight = tonumber(f[6] or '') or 1, rank = tonumber(f[7] or '') or 1,
                arrival = f[8] or ''}
  return {req = 1, tok = i + o, ['in'] = i, out = o}, tonumber(f[3]) or 0, f[4] or '', meta
end

local function meta_str(meta)
  return meta.flow .. ',' .. meta.weight .. ',' .. meta.rank .. ',' .. meta.arrival
end

-- The keys of one deployment ('' = the line itself).
local function dep_keys(id)
  if id == '' then return {id = '', cfg = K_CFG, b = K_B, fly = K_FLY, hdr = K_HDR, st = PREFIX .. 'st'} end
  local p = PREFIX .. 'd:' .. id .. ':'
  return {id = id, cfg = p .. 'cfg', b = p .. 'b', fly = p .. 'fly', hdr = p .. 'hdr', st = p .. 'st'}
end

-- Rates and levels of deployments, pooled per dimension: {rate, level}, or false once one of
-- them is unlimited in it (then that dimension never makes anyone wait).
local function pool_add(pooled, lim, lv)
  for _, d in ipairs(DIMS) do
    local l = lim[d]
    if pooled[d] ~= false then
      if l then
        local p = pooled[d] or {rate = 0, level = 0}
        p.rate, p.level = p.rate + l.rate, p.level + lv[d]
        pooled[d] = p
      else
        pooled[d] = false
      end
    end
  end
end

-- Seconds until the pooled buckets hold `need` (per dimension), at their rates.
local function pool_wait(pooled, need)
  local wait = 0
  for _, d in ipairs(DIMS) do
    local p = pooled[d]
    if p and p.level < need[d] then wait = math.max(wait, (need[d] - p.level) / p.rate) end
  end
  return wait
end

-- The line's deployments, and whether it is a group's line (see the header).
local function deployments()
  local ids = redis.call('HGET', K_CFG, 'deps')
  if not ids then return {dep_keys('')}, false end
  local out = {}
  for id in string.gmatch(ids, '[^,]+') do out[#out + 1] = dep_keys(id) end
  return out, true
end

local function eligible(mask, id)
  return mask == '' or string.find('|' .. mask .. '|', '|' .. id .. '|', 1, true) ~= nil
end

-- The reservation of a started request: {req, tok, in, out, ticket (its place), dep, mask, meta,
-- token}, or nil.
local function get_res(id)
  local v = redis.call('HGET', K_RES, id)
  if not v then return nil end
  local f = split(v)
  return {req = tonumber(f[1]), tok = tonumber(f[2]), ['in'] = tonumber(f[3]), out = tonumber(f[4]), ticket = f[5],
          dep = f[6] or '', mask = f[7] or '',
          meta = {flow = f[8] or '', weight = tonumber(f[9] or '') or 1, rank = tonumber(f[10] or '') or 1,
                  arrival = f[11] or ''},
          token = f[12] or ''}
end

-- Whether `token` may act on reservation `res`: "" (a request-level call: a cancel, the key's
-- line) may; an attempt's token only on its own reservation, never on a later attempt's.
local function holds(res, token)
  return token == '' or res.token == '' or res.token == token
end

local function head()
  local h = redis.call('ZRANGE', K_LINE, 0, 0)
  return h[1]
end

-- Remove a request from the line (it started, left, or expired).
local function remove(id)
  local c, _, _, meta = get_cost(id)
  if c then
    redis.call('HINCRBY', K_SUM, 'n', -1)
    redis.call('HINCRBYFLOAT', K_SUM, 'in', -c['in'])
    redis.call('HINCRBYFLOAT', K_SUM, 'out', -c.out)
    if meta.flow ~= '' and redis.call('HINCRBY', K_FW, meta.flow, -1) <= 0 then redis.call('HDEL', K_FW, meta.flow) end
  end
  redis.call('ZREM', K_LINE, id)
  redis.call('HDEL', K_COST, id)
  redis.call('ZREM', K_DL, id)
end

local function aging()
  return tonumber(redis.call('HGET', K_CFG, 'aging') or '') or 30
end

-- Aging, so that no class is starved by the ones above: the first request of a class below the
-- top that has been first of its class for `aging` seconds moves up one class (keeping its
-- arrival or start tag there). Only class heads age: a backlog does not climb over the requests
-- of its own class that came later (that would undo fair shares), and a lower class is still
-- served once per `aging` (batch: once per two) however busy the classes above are.
-- PREFIX..'age' holds, per class rank, "id@since": its first request and since when.
local function promote(now)
  local step = aging()
  local moved = 0
  for rank = 1, 2 do
    local lo = (rank - 1) * CLASS_STEP
    local found = redis.call('ZRANGEBYSCORE', K_LINE, string.format('%.17g', lo),
      '(' .. string.format('%.17g', lo + CLASS_STEP), 'WITHSCORES', 'LIMIT', 0, 1)
    local field = 'c' .. rank
    if #found == 0 then
      redis.call('HDEL', K_AGE, field)
    else
      local id, score = found[1], tonumber(found[2])
      local seen = redis.call('HGET', K_AGE, field) or ''
      local sid, since = string.match(seen, '^(.*)@([^@]*)$')
      if sid ~= id then
        redis.call('HSET', K_AGE, field, id .. '@' .. fmt(now))
      elseif now - tonumber(since) >= step then
        local f = split(redis.call('HGET', K_COST, id) or '')
        f[7] = tostring(rank - 1)
        redis.call('HSET', K_COST, id, table.concat(f, ','))
        redis.call('ZADD', K_LINE, string.format('%.17g', score - CLASS_STEP), id)
        redis.call('HDEL', K_AGE, field)
        moved = moved + 1
      end
    end
  end
  return moved
end

-- Leases past their expiry belong to crashed workers: their slots come back.
local function prune_leases(now)
  local n = 0
  for _, dep in ipairs(deployments()) do
    local dead = redis.call('ZRANGEBYSCORE', dep.fly, '-inf', now)
    for _, id in ipairs(dead) do redis.call('HDEL', K_RES, id) end
    if #dead > 0 then redis.call('ZREMRANGEBYSCORE', dep.fly, '-inf', now) end
    n = n + #dead
  end
  return n
end

-- Requests whose deadline passed leave the line; their ids are returned to be marked expired.
local function expire(now)
  local gone = redis.call('ZRANGEBYSCORE', K_DL, '-inf', now)
  local was_head = false
  local h = head()
  for _, id in ipairs(gone) do
    if id == h then was_head = true end
    remove(id)
  end
  if #gone > 0 then redis.call('HINCRBY', K_STATS, 'expired', #gone) end
  if was_head then redis.call('SET', K_HS, fmt(now)) end
  return gone
end

-- Seconds until `cost` fits every bucket and a concurrency slot is free (0: now), and which
-- limit binds. `settling`: for how long after its slots became unknown (slots_unknown) a
-- deployment with a concurrency limit takes nothing new — the time every call still running
-- takes to renew its slot, or end (0: no such wait, for a caller that cannot start anything).
local function wait_for(dep, cost, nb, cfg, lim, lv, now, settling)
  local wait, binding = math.max(0, nb - now), 'retry'
  if wait == 0 then binding = 'none' end
  if cfg.hold - now > wait then wait, binding = cfg.hold - now, 'hold' end
  for _, d in ipairs(DIMS) do
    local l = lim[d]
    -- A cost larger than the whole bucket (possible only while a lower limit reported by the
    -- provider is in force) may go once the bucket is full, and leaves it in debt: the rate
    -- still holds on average, and the line cannot stall behind it.
    local need = l and math.min(cost[d], l.cap)
    if l and lv[d] < need then
      local w = (need - lv[d]) / l.rate
      if w > wait then wait, binding = w, d end
    end
  end
  local conc = cfg.conc or 0
  local fr = conc > 0 and (settling or 0) > 0 and tonumber(redis.call('HGET', dep.b, 'fr') or '')
  if fr and fr + settling - now > wait then
    wait, binding = fr + settling - now, 'conc'
  end
  if conc > 0 and redis.call('ZCARD', dep.fly) >= conc then
    -- Usually a release wakes the head first; the earliest lease expiry is the fallback.
    local first = redis.call('ZRANGE', dep.fly, 0, 0, 'WITHSCORES')
    local w = math.max(tonumber(first[2]) - now, 0.001)
    if w > wait then wait, binding = w, 'conc' end
  end
  return wait, binding
end

-- When the pending wake-up fires (K_WAKE's value, "time/number"), or nil.
local function pending_wake(raw)
  if not raw then return nil end
  return tonumber(string.match(raw, '^[^/]+'))
end

-- Make sure the head is woken at now + wait: a wake-up task fires at most `maxc` seconds ahead
-- (cfg; BALANCER_MAX_COUNTDOWN_SECONDS), so a longer wait is a chain of them, each one's grant
-- attempt scheduling the next. K_WAKE holds when the pending task fires. Returns {publish (1 when
-- the caller must publish a wake-up: none pending fires by then), countdown (s), at (its K_WAKE
-- value, which the task brings back to say it is the pending one)}. A pending time in the past is
-- one being served now or one that was lost: either way a new one is due.
local function schedule(wait, now)
  local maxc = tonumber(redis.call('HGET', K_CFG, 'maxc') or '') or 60
  local fire = math.min(wait, maxc)
  local at = now + fire
  local raw = redis.call('GET', K_WAKE)
  local pending = pending_wake(raw)
  if pending and pending > now and pending <= at + 0.0005 then return {0, pending - now, raw} end
  -- "time/number": the number tells this wake-up from an earlier one due at the same time.
  local id = fmt(at) .. '/' .. redis.call('HINCRBY', K_STATS, 'wakes', 1)
  redis.call('SET', K_WAKE, id, 'PX', math.floor((fire + 600) * 1000))
  return {1, fire, id}
end

-- A wake-up task that is the pending one (its `at` is K_WAKE's value) is being served now: what
-- it finds is due is scheduled afresh, however early or late it ran by Redis's clock.
local function wake_served(at)
  if at ~= '' and redis.call('GET', K_WAKE) == at then redis.call('DEL', K_WAKE) end
end

-- A deployment's preference for the head among those that can take it now (higher wins; ties go
-- to the first listed). capacity: the largest share of its buckets and slots left after this
-- cost, times its weight; round_robin: the fewest grants for its weight; latency: the lowest
-- recent latency (one never measured goes first, so that it gets measured; ties: fewest grants);
-- cost: the cheapest for this request's estimate at its prices (pin, pout: US dollars per million
-- input and output tokens; none: free), ties going to the most capacity left.
-- The smallest share of a deployment's buckets and slots left after `cost` (1: all of it).
local function room(dep, cfg, lim, lv, cost)
  local left = 1
  for _, d in ipairs(DIMS) do
    local l = lim[d]
    if l then left = math.min(left, (lv[d] - cost[d]) / l.cap) end
  end
  local conc = cfg.conc or 0
  if conc > 0 then left = math.min(left, (conc - redis.call('ZCARD', dep.fly) - 1) / conc) end
  return left
end

local function score(policy, dep, cfg, lim, lv, cost)
  local weight = cfg.weight or 1
  if policy == 'cost' then
    -- micro-dollars (tokens times dollars per million); room in [0, 1] only breaks ties
    local micro = cost['in'] * (cfg.pin or 0) + cost.out * (cfg.pout or 0)
    return -micro + room(dep, cfg, lim, lv, cost) * 1e-3
  end
  if policy == 'round_robin' or policy == 'latency' then
    local st = redis.call('HMGET', dep.st, 'n', 'lat')
    local n = tonumber(st[1] or '') or 0
    if policy == 'round_robin' then return -(n + 1) / weight end
    return -(tonumber(st[2] or '') or 0) - n * 1e-9
  end
  return room(dep, cfg, lim, lv, cost) * weight
end

-- Where the head goes: the deployment that takes it now, chosen by the group's policy
-- ({dep, cfg, lim, lv}), or else the seconds until the first of its deployments can (one cooling
-- down after failures can when its cooldown ends). Returns nil, nil when no deployment of the
-- line may take it at all (its mask names none that is still listed).
local function choose(cost, nb, mask, now, settling)
  local deps, grouped = deployments()
  local policy = grouped and redis.call('HGET', K_CFG, 'policy') or 'capacity'
  local best, best_score, wait = nil, nil, nil
  for _, dep in ipairs(deps) do
    if not grouped or eligible(mask, dep.id) then
      local cfg, lim = load_cfg(dep)
      local lv = load_levels(dep, lim, now)
      local w = wait_for(dep, cost, nb, cfg, lim, lv, now, settling)
      local probing = false
      if grouped then
        local st = redis.call('HMGET', dep.st, 'cool_until', 'strikes', 'probe')
        local cool = tonumber(st[1] or '')
        if cool and cool - now > w then w = cool - now end
        if (tonumber(st[2] or '') or 0) > 0 and (not cool or cool <= now) then
          -- Half-open: its cooldown is over but no call has succeeded there since. One request
          -- probes it; the others wait for that call's outcome (its settlement wakes the line,
          -- its slot's lease ending at the latest), so one failure is one strike.
          local probe = st[3]
          local out = probe and probe ~= '' and redis.call('ZSCORE', dep.fly, probe)
          if out then
            w = math.max(w, tonumber(out) - now, 0.001)
          else
            probing = true
          end
        end
      end
      if w <= 0 then
        local sc = score(policy, dep, cfg, lim, lv, cost)
        if best == nil or sc > best_score then
          best, best_score = {dep = dep, cfg = cfg, lim = lim, lv = lv, probing = probing}, sc
        end
      elseif wait == nil or w < wait then
        wait = w
      end
    end
  end
  if best then return best, 0 end
  return nil, wait
end

-- When the head can go (now or later), ensure a wake-up; returns schedule's {publish,
-- countdown, at} ({0, 0, ''} for an empty line).
local function wake_head(now)
  local h = head()
  if not h then return {0, 0, ''} end
  local c, nb, mask = get_cost(h)
  local _, wait = choose(c, nb, mask, now)
  wait = wait or 0  -- no deployment may take it: its grant fails it at once
  return schedule(wait, now)
end

-- Put a request in line: its estimated cost, its deadline (max_wait seconds from now, nil: none),
-- the time before which it may not start (nb, 0: none), the deployments it may go to (mask,
-- "" = any) and its meta (flow, weight, rank, arrival). Its place: `ticket` itself when
-- `placed` (back in its own place), else from its arrival (fifo; a new ticket from the line's
-- counter when it has none) or its flow's start tag (fair), in its class.
-- Returns its place and position (0 = head), and whether it just became the head.
local function enter(id, tin, tout, max_wait, ticket, nb, now, mask, meta, placed)
  local existing = redis.call('ZSCORE', K_LINE, id)
  if existing then return existing, redis.call('ZRANK', K_LINE, id), false end
  local score = placed and tonumber(ticket)
  if not score then
    if meta.arrival == '' then meta.arrival = ticket or tostring(redis.call('INCR', K_SEQ)) end
    local base = tonumber(meta.arrival)
    if redis.call('HGET', K_CFG, 'sched') == 'fair' then
      -- Start-time fair queuing: a flow's request starts where its last one finished, or at the
      -- line's virtual time if that is later (an idle flow brings back no credit).
      local fq = redis.call('HMGET', K_FQ, 'vt', 'f:' .. meta.flow)
      base = math.max(tonumber(fq[1] or '') or 0, tonumber(fq[2] or '') or 0)
      redis.call('HSET', K_FQ, 'f:' .. meta.flow, fmt(base + math.max(1, tin + tout) / math.max(meta.weight, 0.001)))
    end
    score = base + (meta.rank - 1) * CLASS_STEP
  end
  local old_head = head()
  redis.call('ZADD', K_LINE, string.format('%.17g', score), id)
  redis.call('HSET', K_COST, id, tin .. ',' .. tout .. ',' .. fmt(nb) .. ',' .. (mask or '') .. ',' .. meta_str(meta))
  redis.call('HINCRBY', K_SUM, 'n', 1)
  redis.call('HINCRBYFLOAT', K_SUM, 'in', tin)
  redis.call('HINCRBYFLOAT', K_SUM, 'out', tout)
  if meta.flow ~= '' then redis.call('HINCRBY', K_FW, meta.flow, 1) end
  if max_wait then redis.call('ZADD', K_DL, fmt(now + max_wait), id) end
  local pos = redis.call('ZRANK', K_LINE, id)
  local new_head = pos == 0 and old_head ~= id
  if new_head then redis.call('SET', K_HS, fmt(now)) end
  return string.format('%.17g', score), pos, new_head
end
