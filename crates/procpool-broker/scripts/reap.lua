-- reap: requeue the pending entries of an agent whose liveness key expired, then forget
-- the agent. A started attempt counts against the task's lost budget; an entry read but
-- never started does not.
-- KEYS[1] P:q  KEYS[2] P:agents  KEYS[3] P:a:<agent>
-- ARGV[1] P  [2] agent
-- Returns the number of entries handled, or -1 when the agent is alive.
local P, agent = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local pending = redis.call('XPENDING', KEYS[1], 'agents', '-', '+', 100, agent)
for _, p in ipairs(pending) do
  local entry = p[1]
  local id = entry_task(P, entry)
  if not id then
    redis.call('XACK', KEYS[1], 'agents', entry)
  else
    local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'entry', 'agent')
    if not h[1] or h[1] == 'done' or h[2] ~= entry then
      drop_entry(P, entry)
    else
      requeue(P, id, entry, h[1] == 'running' and h[3] == agent)
    end
  end
end
if #pending < 100 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'agents', agent)
  redis.call('SREM', KEYS[2], agent)
end
return #pending
