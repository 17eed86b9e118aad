-- Record the limits a provider reported in its rate-limit headers. A limit below the configured
-- one is used instead while fresh (see load_cfg); one at or above it ends the override, so the
-- bucket recovers when the provider does. Nothing is written when nothing changes.
-- ARGV: deployment ("" = the line itself), then pairs of field, per-minute value (fields: rpm,
--       tpm, itpm, otpm)
-- Returns the number of limits now overridden
local now = now_s()
local dep = dep_keys(ARGV[1])
local K_HDR = dep.hdr
local cfg = {}
local raw = redis.call('HGETALL', dep.cfg)
for i = 1, #raw, 2 do cfg[raw[i]] = tonumber(raw[i + 1]) end
local overridden = 0
local changed = false
for i = 2, #ARGV, 2 do
  local field, value = ARGV[i], tonumber(ARGV[i + 1])
  local configured = cfg[field]
  if value and configured and configured > 0 then
    if value < configured then
      redis.call('HSET', K_HDR, field, tostring(value))
      overridden = overridden + 1
      changed = true
    elseif redis.call('HDEL', K_HDR, field) == 1 then
      changed = true
    end
  end
end
if overridden > 0 then
  redis.call('HSET', K_HDR, 'at', fmt(now))
elseif changed and redis.call('HLEN', K_HDR) <= 1 then
  redis.call('DEL', K_HDR)
end
return overridden
