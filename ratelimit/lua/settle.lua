-- End a started request's attempt in one step: return its slot, settle its reservation against
-- what it really used, take in what the provider said about its own bucket, and (for an attempt
-- that will be retried) put it back in its own place in line before anyone else is woken.
-- ARGV: id, mode, input_tokens, output_tokens,
--       retry_in (s from now before the retry may start; "" = no retry), max_wait (s; "" = none),
--       throttled ("1" when the provider answered 429), hold (s the provider asked us to wait;
--       "" = unknown), then pairs of bucket, remaining (what the provider's headers say is left:
--       req, tok, in, out)
--   mode "usage":  charge the real usage (refund or charge the difference; levels may go
--                  negative, and refill pays the debt)
--   mode "refund": the upstream never processed it: give everything back, the request too
--   mode "tokens": the upstream refused it: keep the request, give the tokens back
--   mode "keep":   outcome unknown (a 5xx): keep the whole reservation
-- A 429 is news about the provider's bucket, for every process at once: our levels drop to what
-- the provider says is left (0 when it does not say), and nothing starts before its hold.
-- Idempotent: a request already settled is left alone (and is not re-entered).
-- Returns {settled (0/1), publish_wake (0/1), wake_in_s, ticket ("" when already settled)}
local id, mode, uin, uout = ARGV[1], ARGV[2], tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local retry_in, max_wait = tonumber(ARGV[5] or ''), tonumber(ARGV[6] or '')
local throttled, hold = ARGV[7] == '1', tonumber(ARGV[8] or '')
local now = now_s()
local reserved = redis.call('HGET', K_RES, id)
redis.call('ZREM', K_FLY, id)
local cfg, lim = load_cfg()
local lv = load_levels(lim, now)
local settled, ticket = 0, ''
if reserved then
  settled = 1
  local r, t, i, o, tk = string.match(reserved, '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)$')
  ticket = tk
  r, t, i, o = tonumber(r), tonumber(t), tonumber(i), tonumber(o)
  local back
  if mode == 'refund' then
    back = {req = r, tok = t, ['in'] = i, out = o}
  elseif mode == 'tokens' then
    back = {req = 0, tok = t, ['in'] = i, out = o}
  elseif mode == 'keep' then
    back = {req = 0, tok = 0, ['in'] = 0, out = 0}
  else
    back = {req = 0, tok = t - (uin + uout), ['in'] = i - uin, out = o - uout}
  end
  for _, d in ipairs(DIMS) do
    if lv[d] then lv[d] = math.min(lim[d].cap, lv[d] + back[d]) end
  end
  redis.call('HDEL', K_RES, id)
  if retry_in and tonumber(tk) and tonumber(tk) > 0 then
    enter(id, i, o, max_wait, tk, now + retry_in, now)
    redis.call('LPUSH', K_GRANTS, 'r' .. tk .. '@' .. fmt(now))
    redis.call('LTRIM', K_GRANTS, 0, LAG_KEEP - 1)
  end
end
if throttled then
  local left = {}
  for k = 9, #ARGV, 2 do left[ARGV[k]] = tonumber(ARGV[k + 1]) end
  for _, d in ipairs(DIMS) do
    if lv[d] then lv[d] = math.min(lv[d], left[d] or 0) end
  end
  if hold and hold > 0 then
    local until_t = now + hold
    if until_t > cfg.hold then
      redis.call('HSET', K_HDR, 'hold', fmt(until_t))
      cfg.hold = until_t
    end
  end
end
if settled == 1 or throttled then save_levels(lv, now) end
local nxt = wake_head(cfg, lim, lv, now)
return {tostring(settled), tostring(nxt[1]), fmt(nxt[2]), ticket}
