-- emit: an event of a running attempt (started, progress, message), fenced: refused
-- unless the task is running on this agent at this attempt.
-- KEYS[1] P:t:<id>
-- ARGV[1] P  [2] id  [3] agent  [4] attempt  [5] kind  [6] data
-- Returns 1, or 0 when the attempt is stale (the agent must kill its worker).
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'agent', 'att')
if h[1] ~= 'running' or h[2] ~= ARGV[3] or h[3] ~= ARGV[4] then return 0 end
event(P, id, 'k', ARGV[5], 'a', ARGV[4], 'd', ARGV[6])
return 1
