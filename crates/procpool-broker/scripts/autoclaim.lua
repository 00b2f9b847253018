-- autoclaim: the backstop of reap. Entries idle past min_idle (their owner stopped
-- renewing without its agent id being in P:agents) are requeued unless their task runs
-- on a live agent at that entry (whose next renewal takes the entry back).
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
    local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'entry', 'agent')
    local live = h[3] and h[3] ~= '' and redis.call('EXISTS', P .. ':a:' .. h[3]) == 1
    if not h[1] or h[1] == 'done' or h[2] ~= entry then
      drop_entry(P, entry)
      n = n + 1
    elseif not (h[1] == 'running' and live) then
      requeue(P, id, entry, h[1] == 'running')
      n = n + 1
    end
  end
end
return n
