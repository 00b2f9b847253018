-- renew: an agent's lease renewal, from its own timer. Refreshes its liveness key,
-- resets the idle time of the entries it still owns at their attempt, and reports the
-- leases it lost (requeued or finished elsewhere) and the cancel flags set.
-- A lease not renewed within the lease time (the agent stalled) is not renewed late: the
-- reapers may already have handed it on, so it is requeued here (counted like an attempt
-- lost with its agent) and reported lost; the agent kills its worker.
-- KEYS[1] P:a:<agent>  KEYS[2] P:agents
-- ARGV[1] P  [2] agent  [3] lease, the liveness TTL (ms)  [4] agent info (JSON)
--      then per running task: id, entry, attempt
-- Returns {lost ids, cancelled ids}.
local P, agent = ARGV[1], ARGV[2]
local lease = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], agent)
-- The set lives as long as the longest lease of its live agents: dead ones are reaped by
-- the others, and once none renews, the set goes with the last lease.
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
local lost, cancelled = {}, {}
for i = 5, #ARGV, 3 do
  local id, entry, att = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'agent', 'att', 'entry', 'cancel',
    'name')
  if h[1] == 'done' and h[2] == agent and h[3] == att then
    -- Finished by this very attempt while the renewal was on its way: nothing lost.
  elseif h[1] ~= 'running' or h[2] ~= agent or h[3] ~= att or h[4] ~= entry then
    lost[#lost + 1] = id
  else
    local q = queue(P, h[6])
    local p = redis.pcall('XPENDING', q, 'agents', entry, entry, 1)
    if type(p) ~= 'table' or p.err or not p[1] or p[1][2] ~= agent
        or tonumber(p[1][3]) > lease then
      requeue(P, id, entry, true)
      lost[#lost + 1] = id
    else
      redis.call('XCLAIM', q, 'agents', agent, 0, entry, 'JUSTID')
      if h[5] == '1' then cancelled[#cancelled + 1] = id end
    end
  end
end
return {lost, cancelled}
