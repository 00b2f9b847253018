-- reap: requeue the pending entries of an agent whose liveness key expired, in every
-- queue, then forget the agent. A started attempt counts against the task's lost budget;
-- an entry read but never started does not.
-- KEYS[1] P:names  KEYS[2] P:agents  KEYS[3] P:a:<agent>
-- ARGV[1] P  [2] agent
-- Returns the number of entries handled, or -1 when the agent is alive.
local P, agent = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local names = redis.call('SMEMBERS', KEYS[1])
-- At most this many entries per call: the rest on the next round.
local budget = 100
local handled = 0
for _, name in ipairs(names) do
  local q = queue(P, name)
  -- A queue without its group (made by a write after a data loss) holds nothing pending.
  local pending = redis.pcall('XPENDING', q, 'agents', '-', '+', budget - handled, agent)
  if type(pending) == 'table' and not pending.err then
    for _, p in ipairs(pending) do
      reclaim(P, q, p[1], agent)
      handled = handled + 1
    end
  end
  if handled >= budget then return handled end
end
for _, name in ipairs(names) do
  redis.pcall('XGROUP', 'DELCONSUMER', queue(P, name), 'agents', agent)
end
redis.call('SREM', KEYS[2], agent)
return handled
