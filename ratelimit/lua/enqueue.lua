-- Take a place in the line: by arrival (fifo) or by the flow's start tag (fair), in its class;
-- or back in a place it had (`place`).
-- ARGV: id, input_tokens, output_tokens, max_wait (s from now; "" for none), arrival (its arrival
--       ticket; "" for the line's next), mask (the deployments it may go to, ids joined by '|';
--       "" = any), flow (its client key; "" = none), weight (the flow's), class (0 interactive,
--       1 default, 2 batch), place ("" = a new place; else its old score)
-- Returns {place, position (0 = head), publish_wake (0/1), wake_in_s}
local id, tin, tout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait, arrival, mask = tonumber(ARGV[4] or ''), ARGV[5] or '', ARGV[6] or ''
local meta = {flow = ARGV[7] or '', weight = tonumber(ARGV[8] or '') or 1, rank = tonumber(ARGV[9] or '') or 1,
              arrival = arrival}
local place = ARGV[10] or ''
local now = now_s()
local t, pos = enter(id, tin, tout, max_wait, place ~= '' and place or nil, 0, now, mask, meta, place ~= '')
return {tostring(t), tostring(pos), '0', '0'}
