-- End a started request's attempt in one step: return its slot, settle its reservation against
-- what it really used, take in what the provider said about its own bucket, and (for an attempt
-- that will be retried) put it back in its own place in line before anyone else is woken. All
-- of it on the deployment the attempt went to (see _lib.lua): a 429 from one deployment is news
-- about that deployment's bucket only.
-- ARGV: id, mode, input_tokens, output_tokens,
--       retry_in (s from now before the retry may start; "" = no retry), max_wait (s; "" = none),
--       throttled ("1" when the provider answered 429), hold (s the provider asked us to wait;
--       "" = unknown), fault (what the attempt said of its deployment's health: "ok", "auth"
--       (401/403), "down" (unreachable), "error" (5xx, timeout), "" = nothing), latency (s of
--       the upstream call; "" = unknown), token (the attempt's fencing token; "" = a
--       request-level settlement), then pairs of bucket, remaining (what the provider's headers
--       say is left: req, tok, in, out)
--   mode "usage":  charge the real usage (refund or charge the difference; levels may go
--                  negative, and refill pays the debt)
--   mode "refund": the upstream never processed it: give everything back, the request too
--   mode "tokens": the upstream refused it: keep the request, give the tokens back
--   mode "keep":   outcome unknown (a 5xx): keep the whole reservation
-- A 429 is news about the provider's bucket, for every process at once: our levels drop to what
-- the provider says is left (0 when it does not say), and nothing starts there before its hold.
-- On a group's line, a deployment whose key is refused or which cannot be reached cools down at
-- once, one that fails `fails` times in a row (5xx, timeouts) then; each cooldown in a row is
-- twice the last (cool seconds, up to cool_max), and a success ends the series.
-- Idempotent: a request already settled is left alone (and is not re-entered). Fenced: an
-- attempt whose token is not the reservation's (it lost its lease and the request was run
-- again) changes nothing at all, and gets {0, 0, 0, ""}.
-- Returns {settled (0/1), publish_wake (0/1), wake_in_s, ticket ("" when already settled), wake_at}
local id, mode, uin, uout = ARGV[1], ARGV[2], tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local retry_in, max_wait = tonumber(ARGV[5] or ''), tonumber(ARGV[6] or '')
local throttled, hold = ARGV[7] == '1', tonumber(ARGV[8] or '')
local fault, latency, token = ARGV[9] or '', tonumber(ARGV[10] or ''), ARGV[11] or ''
local now = now_s()
local res = get_res(id)
if res and not holds(res, token) then return {'0', '0', fmt(0), '', ''} end
if token ~= '' and not res then
  -- Settled already, or its lease ran out and it was given back: a later attempt's slot (same
  -- request id) is not this one's to free, nor is its news about the provider still current.
  return {'0', '0', fmt(0), '', ''}
end
for _, d in ipairs(deployments()) do redis.call('ZREM', d.fly, id) end
local dep = dep_keys(res and res.dep ~= '-' and res.dep or '')
local cfg, lim = load_cfg(dep)
local lv = load_levels(dep, lim, now)
local settled, ticket = 0, ''
if res then
  settled = 1
  ticket = res.ticket
  local back
  if mode == 'refund' then
    back = {req = res.req, tok = res.tok, ['in'] = res['in'], out = res.out}
  elseif mode == 'tokens' then
    back = {req = 0, tok = res.tok, ['in'] = res['in'], out = res.out}
  elseif mode == 'keep' then
    back = {req = 0, tok = 0, ['in'] = 0, out = 0}
  else
    back = {req = 0, tok = res.tok - (uin + uout), ['in'] = res['in'] - uin, out = res.out - uout}
  end
  for _, d in ipairs(DIMS) do
    if lv[d] then lv[d] = math.min(lim[d].cap, lv[d] + back[d]) end
  end
  redis.call('HDEL', K_RES, id)
  if retry_in and tonumber(ticket) then
    enter(id, res['in'], res.out, max_wait, ticket, now + retry_in, now, res.mask, res.meta, true)
    log_push(K_GRANTS, 'r' .. (res.meta.arrival ~= '' and res.meta.arrival or ticket) .. '@' .. fmt(now), now,
      AUDIT_SECONDS, LAG_KEEP)
  end
end
if throttled then
  local left = {}
  for k = 12, #ARGV, 2 do left[ARGV[k]] = tonumber(ARGV[k + 1]) end
  for _, d in ipairs(DIMS) do
    if lv[d] then lv[d] = math.min(lv[d], left[d] or 0) end
  end
  if hold and hold > 0 then
    local until_t = now + hold
    if until_t > cfg.hold then
      redis.call('HSET', dep.hdr, 'hold', fmt(until_t))
    end
  end
end
if settled == 1 or throttled then save_levels(dep, lv, now) end
if dep.id ~= '' and redis.call('HGET', dep.st, 'probe') == id then
  redis.call('HDEL', dep.st, 'probe')  -- its outcome is in: the next one may probe, or all go
end
if dep.id ~= '' and fault ~= '' then
  if fault == 'ok' then
    if latency then
      local lat = tonumber(redis.call('HGET', dep.st, 'lat') or '')
      redis.call('HSET', dep.st, 'lat', fmt(lat and (0.8 * lat + 0.2 * latency) or latency))
    end
    redis.call('HDEL', dep.st, 'errs', 'strikes')
  else
    local errs = redis.call('HINCRBY', dep.st, 'errs', 1)
    local fails = tonumber(redis.call('HGET', K_CFG, 'fails') or '') or 3
    if fault ~= 'error' or errs >= fails then
      local strikes = redis.call('HINCRBY', dep.st, 'strikes', 1)
      local base = tonumber(redis.call('HGET', K_CFG, 'cool') or '') or 10
      local most = tonumber(redis.call('HGET', K_CFG, 'cool_max') or '') or 300
      local cool = math.min(base * 2 ^ (strikes - 1), most)
      redis.call('HSET', dep.st, 'cool_until', fmt(now + cool), 'cool_for', fmt(cool), 'errs', '0',
        'fault', fault)
    end
  end
end
local nxt = wake_head(now)
return {tostring(settled), tostring(nxt[1]), fmt(nxt[2]), ticket, nxt[3]}
