-- Return a started request's slot and settle its reservation against what it really used.
-- ARGV: id, mode, input_tokens, output_tokens
--   mode "usage":  charge the real usage (refund or charge the difference; levels may go
--                  negative, and refill pays the debt)
--   mode "refund": the upstream never processed it: give everything back, the request too
--   mode "tokens": the upstream refused it: keep the request, give the tokens back
--   mode "keep":   outcome unknown (a 5xx): keep the whole reservation
-- Idempotent: a request already settled is left alone.
-- Returns {settled (0/1), publish_wake (0/1), wake_in_s, ticket ("" when already settled)}
local id, mode, uin, uout = ARGV[1], ARGV[2], tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
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
  save_levels(lv, now)
  redis.call('HDEL', K_RES, id)
end
local nxt = wake_head(cfg, lim, lv, now)
return {tostring(settled), tostring(nxt[1]), fmt(nxt[2]), ticket}
