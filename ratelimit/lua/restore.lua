-- Start a line that Redis lost (it restarted without its data; the caller has just written the
-- line's configuration again from the database) conservatively, as a promoted replica's buckets
-- start (_primary.lua): each deployment's bucket that Redis does not hold starts empty as of now
-- when `empty` (the database shows calls on the line within a bucket's span, so the provider's
-- own bucket may be as empty; else full, as a new line's), and, when `running` (the database
-- shows calls of the line still running), its concurrency slots unknown (slots_unknown): those
-- calls put theirs back with their next renewal, and a deployment with a concurrency limit takes
-- nothing new until they have (wait_for's settling). A bucket Redis holds (written since the
-- loss) is left as it is.
-- ARGV: empty ("1" or ""), running ("1" or "")
-- Returns the number of buckets started.
local empty, running = ARGV[1] == '1', ARGV[2] == '1'
local now = now_s()
local started = 0
for _, dep in ipairs(deployments()) do
  if redis.call('HEXISTS', dep.b, 'ts') == 0 then
    local _, lim = load_cfg(dep)
    local lv = {}
    for _, d in ipairs(DIMS) do
      if lim[d] then lv[d] = empty and 0 or lim[d].cap end
    end
    save_levels(dep, lv, now)
    if running then redis.call('HSET', dep.b, 'fr', fmt(now)) end
    started = started + 1
  end
end
return started
