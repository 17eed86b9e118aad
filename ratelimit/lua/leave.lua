-- Take a request out of the line (cancelled). If it was the head, the next one is woken.
-- ARGV: id
-- Returns {left (0/1), publish_wake (0/1), wake_in_s, wake_at}
local id = ARGV[1]
local now = now_s()
if not redis.call('ZSCORE', K_LINE, id) then return {'0', '0', '0', ''} end
local was_head = head() == id
remove(id)
if not was_head then return {'1', '0', '0', ''} end
redis.call('SET', K_HS, fmt(now))
local nxt = wake_head(now)
return {'1', tostring(nxt[1]), fmt(nxt[2]), nxt[3]}
