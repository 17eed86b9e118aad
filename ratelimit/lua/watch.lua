-- Periodic care of a line, run by every worker: expire passed deadlines, free the slots of lost
-- leases, and wake the head if no wake-up is pending (one was lost, or limits were raised).
-- ARGV: grace seconds (a pending wake-up this far overdue counts as lost; -1: wake regardless)
-- Returns {publish_wake (0/1), wake_in_s, wake_at, expired ids...}
local grace = tonumber(ARGV[1])
local now = now_s()
local expired = expire(now)
local freed = prune_leases(now)
promote(now)
local wake = {0, 0, ''}
if head() then
  local pending = pending_wake(redis.call('GET', K_WAKE))
  if grace < 0 or freed > 0 or #expired > 0 or pending == nil or pending < now - grace then
    if grace < 0 then redis.call('DEL', K_WAKE) end
    wake = wake_head(now)
  end
end
local out = {tostring(wake[1]), fmt(wake[2]), wake[3]}
for _, e in ipairs(expired) do out[#out + 1] = e end
return out
