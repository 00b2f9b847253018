-- autoclaim: the backstop of reap. Entries idle past min_idle are requeued: their owner
-- stopped renewing them, whether it is gone without its agent id being in P:agents, or
-- alive but no longer running the task (it killed it after missing renewals, and its
-- renewals no longer name it). A live agent's running lease never gets that idle: every
-- renewal resets it.
-- KEYS[1] P:q
-- ARGV[1] P  [2] consumer name of the reaper  [3] min idle (ms)
-- Returns the number of entries requeued or dropped.
local P = ARGV[1]
local r = redis.call('XAUTOCLAIM', KEYS[1], 'agents', ARGV[2], ARGV[3], '0-0', 'COUNT',
  100, 'JUSTID')
local n = 0
for _, entry in ipairs(r[2]) do
  local id = entry_task(P, entry)
  if not id then
    redis.call('XACK', KEYS[1], 'agents', entry)
    n = n + 1
  else
    local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'entry')
    if not h[1] or h[1] == 'done' or h[2] ~= entry then
      drop_entry(P, entry)
    else
      requeue(P, id, entry, h[1] == 'running')
    end
    n = n + 1
  end
end
return n
