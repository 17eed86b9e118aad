-- Periodic care of a line, run by every worker: expire passed deadlines, free the slots of lost
-- leases, and wake the head if no wake-up is pending (one was lost, or limits were raised).
-- ARGV: grace seconds (a pending wake-up this far overdue counts as lost; -1: wake regardless)
-- Returns {publish_wake (0/1), wake_in_s, expired ids...}
local grace = tonumber(ARGV[1])
local now = now_s()
local expired = expire(now)
local freed = prune_leases(now)
promote(now)
local publish, wait = 0, 0
if head() then
  local pending = tonumber(redis.call('GET', K_WAKE) or '')
  if grace < 0 or freed > 0 or #expired > 0 or pending == nil or pending < now - grace then
    if grace < 0 then redis.call('DEL', K_WAKE) end
    local r = wake_head(now)
    publish, wait = r[1], r[2]
  end
end
local out = {tostring(publish), fmt(wait)}
for _, e in ipairs(expired) do out[#out + 1] = e end
return out
