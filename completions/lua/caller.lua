-- Whether the web process behind a reply channel is gone (completions.listeners).
-- KEYS[1]: the listener key (alive while the process beats), KEYS[2]: the channel's lost mark,
-- KEYS[3]: the tend's epoch key (when Redis last started empty)
-- ARGV: channel, now (seconds), listener TTL, grace for a lost subscription
-- Returns {1, 0} when gone, {0, 0} when alive or unsure, {0, ms} when the subscription has been
-- missing for less than the grace: ask again in `ms` milliseconds.
local channel, now, ttl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch = tonumber(redis.call('GET', KEYS[3]))
-- A missing key says gone, except right after Redis lost its data (no listener has beaten yet).
-- It also covers a host that died without closing its connections, whose subscription Redis
-- keeps until TCP keepalive gives up on it.
if epoch ~= nil and now - epoch > ttl and redis.call('EXISTS', KEYS[1]) == 0 then return {1, 0} end
-- The key outlives a killed process by up to its TTL, but Redis drops the subscription as soon as
-- the process's connection closes. A live listener that lost its connection (Redis restarted,
-- say) subscribes again within its backoff, shorter than the grace, and then clears the mark:
-- only a subscription missing for `grace` seconds says gone.
if redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0 then return {0, 0} end
redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', math.ceil(ttl))
local missing = now - tonumber(redis.call('GET', KEYS[2]))
if missing >= grace then return {1, 0} end
return {0, math.ceil((grace - missing) * 1000)}
