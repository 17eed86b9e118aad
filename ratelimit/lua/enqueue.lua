-- Take a place in the line: by arrival (fifo) or by the flow's start tag (fair), in its class;
-- or back in a place it had (`place`).
-- ARGV: id, input_tokens, output_tokens, max_wait (s from now; "" for none), arrival (its arrival
--       ticket; "" for the line's next), mask (the deployments it may go to, ids joined by '|';
--       "" = any), flow (its client key; "" = none), weight (the flow's), class (0 interactive,
--       1 default, 2 batch), place ("" = a new place; else its old score), absent ("1": only if
--       it is neither waiting in the line nor holding a reservation of it — the sweep's check and
--       re-entry in one step), configured ("1": the caller's registry gives the line a quota, so
--       its configuration must be here); then, for a request's first entry, its budgets
--       (_budget.lua: amount, n, limit/ttl pairs on KEYS[16..]; "" = none), reserved in the same
--       step
-- Returns {place, position (0 = head), publish_wake (0/1), wake_in_s}; position -1 when `absent`
-- found it there already (nothing done); {'', -2, 'over' or 'unknown', budget index, left} when a
-- budget refused it (nothing done); {'', -3} when `configured` and Redis has no configuration of
-- the line: it lost its data, and the caller writes the line again (restore.lua) before anything
-- enters it, which would otherwise go unlimited (nothing done)
local id, tin, tout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait, arrival, mask = tonumber(ARGV[4] or ''), ARGV[5] or '', ARGV[6] or ''
local meta = {flow = ARGV[7] or '', weight = tonumber(ARGV[8] or '') or 1, rank = tonumber(ARGV[9] or '') or 1,
              arrival = arrival}
local place = ARGV[10] or ''
if ARGV[12] == '1' and redis.call('EXISTS', K_CFG) == 0 then return {'', '-3'} end
if ARGV[11] == '1' then
  local at = redis.call('ZSCORE', K_LINE, id)
  if at or redis.call('HEXISTS', K_RES, id) == 1 then return {tostring(at or ''), '-1', '0', '0'} end
end
local amount, limits, ttls = budget_args(13)
if amount then
  local refused = budget_reserve(16, id, amount, limits, ttls)
  if refused then return {'', '-2', refused[1], refused[2], refused[3]} end
end
local now = now_s()
local t, pos = enter(id, tin, tout, max_wait, place ~= '' and place or nil, 0, now, mask, meta, place ~= '')
return {tostring(t), tostring(pos), '0', '0'}
