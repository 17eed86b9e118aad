-- Renew the lease of a started request's slot: its attempt is alive and making progress.
-- ARGV: id, token (the attempt's fencing token), lease seconds from now
-- Returns {1}, or {0} when the reservation is another attempt's: this one has lost the request.
-- A reservation that is gone (its lease ran out while Redis was away, or Redis lost its data) has
-- nothing left to renew: {1} (whether the attempt still owns its request is its lease's to say).
local id, token, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local res = get_res(id)
if not res then return {'1'} end
if not holds(res, token) then return {'0'} end
local dep = dep_keys(res.dep ~= '-' and res.dep or '')
-- XX: only a slot it holds; GT: a renewal never shortens a lease.
redis.call('ZADD', dep.fly, 'XX', 'GT', fmt(now_s() + lease), id)
return {'1'}
