-- Renew the lease of a started request's slot: its attempt is alive and making progress.
-- ARGV: id, token (the attempt's fencing token), lease seconds from now, deployment (the one its
--       grant named: "" on a line without deployments, "-" when it holds no slot)
-- Returns {1}, or {0} when the reservation is another attempt's: this one has lost the request.
-- A reservation that is gone has nothing left to renew: {1} (whether the attempt still owns its
-- request is its lease's to say). Unless Redis lost it — a promoted replica that lacks the
-- grant, or a Redis that lost its data (slots_unknown): then the call still running holds a
-- slot at the provider, and the renewal puts it back (a reservation of nothing, under this
-- attempt's token, so that its settlement frees the slot; a retry is put back in line by the
-- sweeper, as any whose reservation was lost).
local id, token, lease, dep_id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] or '-'
local res = get_res(id)
if not res then
  if dep_id == '-' then return {'1'} end
  local now = now_s()
  for _, dep in ipairs(deployments()) do
    if dep.id == dep_id and slots_unknown(dep, now, lease) then
      redis.call('ZADD', dep.fly, 'NX', fmt(now + lease), id)
      redis.call('HSET', K_RES, id, '0,0,0,0,,' .. dep_id .. ',,' .. meta_str({flow = '', weight = 1, rank = 1,
        arrival = ''}) .. ',' .. token)
    end
  end
  return {'1'}
end
if not holds(res, token) then return {'0'} end
local dep = dep_keys(res.dep ~= '-' and res.dep or '')
-- XX: only a slot it holds; GT: a renewal never shortens a lease.
redis.call('ZADD', dep.fly, 'XX', 'GT', fmt(now_s() + lease), id)
return {'1'}
