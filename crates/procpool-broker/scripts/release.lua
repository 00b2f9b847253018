-- release: an agent that is stopping hands a task it will not finish back to the queue,
-- without counting against the task's lost budget. Fenced like complete.
-- KEYS[1] P:t:<id>
-- ARGV[1] P  [2] id  [3] agent  [4] attempt
-- Returns 1 handed back, 0 refused.
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'agent', 'att', 'entry')
if h[1] ~= 'running' or h[2] ~= ARGV[3] or h[3] ~= ARGV[4] then return 0 end
requeue(P, id, h[4], false)
return 1
