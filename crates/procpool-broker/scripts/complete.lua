-- complete: the outcome of an attempt, fenced: applied only if the task is running on
-- this agent at this attempt (a late write from an agent presumed dead is refused).
-- KEYS[1] P:t:<id>
-- ARGV[1] P  [2] id  [3] agent  [4] attempt  [5] status ('ok'|'err')  [6] value
-- Returns 1 applied, 0 refused.
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'agent', 'att')
if h[1] ~= 'running' or h[2] ~= ARGV[3] or h[3] ~= ARGV[4] then return 0 end
finish(P, id, ARGV[4], ARGV[5], ARGV[6])
return 1
