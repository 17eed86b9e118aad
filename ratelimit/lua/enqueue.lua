-- Take a place at the end of the model's line.
-- ARGV: id, input_tokens, output_tokens, max_wait (s from now; "" for none), ticket ("" for new),
--       delay (s from now before it may start; "" for none)
-- A ticket is passed when a request re-enters after a failed attempt: it keeps its place, and
-- not_before holds the line until its backoff is over.
-- Returns {ticket, position (0 = head), publish_wake (0/1), wake_in_s}
local id, tin, tout, max_wait, ticket = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = now_s()
local delay = tonumber(ARGV[6] or '')
local nb = 0
if delay then nb = now + delay end
local existing = redis.call('ZSCORE', K_LINE, id)
if existing then
  return {existing, tostring(redis.call('ZRANK', K_LINE, id)), '0', '0'}
end
if ticket == '' then ticket = tostring(redis.call('INCR', K_SEQ)) end
local old_head = head()
redis.call('ZADD', K_LINE, ticket, id)
redis.call('HSET', K_COST, id, tin .. ',' .. tout .. ',' .. fmt(nb))
redis.call('HINCRBY', K_SUM, 'n', 1)
redis.call('HINCRBYFLOAT', K_SUM, 'in', tin)
redis.call('HINCRBYFLOAT', K_SUM, 'out', tout)
if max_wait ~= '' then redis.call('ZADD', K_DL, fmt(now + tonumber(max_wait)), id) end
local pos = redis.call('ZRANK', K_LINE, id)
local publish, wait = 0, 0
if pos == 0 and old_head ~= id then
  redis.call('SET', K_HS, fmt(now))
  if nb > now then
    -- Re-entering at the head with a backoff: the line waits for it.
    local cfg, lim = load_cfg()
    local r = wake_head(cfg, lim, load_levels(lim, now), now)
    publish, wait = r[1], r[2]
  end
end
return {ticket, tostring(pos), tostring(publish), fmt(wait)}
