-- Prepended to every script of this folder, before the others.
--
-- Which Redis primary this is: its replication id (INFO replication, master_replid). A replica
-- copies its primary's writes a moment after they are made, so one promoted by a failover may
-- lack the last of them; a Redis restarted from a snapshot lacks what came after it. Either
-- answers with another replication id than the primary that made the writes, so state that a
-- lost write could make too generous records the id it was written under, and is rebuilt
-- conservatively when it is first used under another:
--   bucket levels (_lib.lua load_levels): emptied as of now, refilling at their rate from there
--     (the provider's own bucket holds no less than empty: a grant the replica forgot is never
--     granted again);
--   budget periods (_budget.lua): built again from the database, as after a loss of data;
--   concurrency slots (_lib.lua slots_unknown): a running attempt's renewal puts its slot back,
--     and a deployment with a concurrency limit grants nothing new until all have renewed.
-- A Redis that lost everything (restarted without its data) holds none of it: a line is written
-- again from the database before anything enters it, and restore.lua starts it alike.
local PRIMARY_ID = nil
local function primary_id()
  if PRIMARY_ID == nil then
    PRIMARY_ID = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
  end
  return PRIMARY_ID
end
