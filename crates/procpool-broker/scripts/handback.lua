-- handback: an agent read an entry it will not start (a blocking read over several
-- queues returned more than it has slots for): the task goes back to the end of its
-- queue for any agent, no attempt counted, no event. A stale entry is dropped.
-- KEYS[1] the queue P:q:<name>  KEYS[2] P:t:<id>
-- ARGV[1] P  [2] id  [3] entry
-- Returns 1 handed back, 0 dropped or left (the task runs under this entry).
local P, id, entry = ARGV[1], ARGV[2], ARGV[3]
local h = redis.call('HMGET', KEYS[2], 'st', 'entry', 'name')
local current = h[2] == entry and queue(P, h[3]) == KEYS[1]
if current and h[1] == 'queued' then
  move_entry(KEYS[2], KEYS[1], entry, id)
  return 1
end
if not current or h[1] ~= 'running' then drop_entry(KEYS[1], entry) end
return 0
