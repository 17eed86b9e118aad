-- Take a place at the end of the model's line.
-- ARGV: id, input_tokens, output_tokens, max_wait (s from now; "" for none), ticket ("" for new),
--       mask (the deployments it may go to, ids joined by '|'; "" = any)
-- Returns {ticket, position (0 = head), publish_wake (0/1), wake_in_s}
local id, tin, tout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait, ticket, mask = tonumber(ARGV[4] or ''), ARGV[5], ARGV[6] or ''
if ticket == '' then ticket = nil end
local now = now_s()
local t, pos = enter(id, tin, tout, max_wait, ticket, 0, now, mask)
return {tostring(t), tostring(pos), '0', '0'}
