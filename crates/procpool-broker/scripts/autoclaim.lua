-- autoclaim: requeue the entries whose lease ran out. Every renewal of a live agent
-- resets the idle time of the entries it runs, so an entry idle past the lease belongs to
-- an agent that is gone (before the reaper saw its liveness key expire), stalled (it
-- missed its renewals: it kills its workers itself), or no longer running the task (it
-- killed it and stopped renewing it), or was read and never started. Run by every agent's
-- reaper, so a lease is handed on within about the lease plus a reaper period.
-- KEYS[1] P:q
-- ARGV[1] P  [2] consumer name of the reaper  [3] min idle: the lease (ms)  [4] cursor
-- Returns {number of entries requeued or dropped, the next cursor}.
local P = ARGV[1]
local r = redis.call('XAUTOCLAIM', KEYS[1], 'agents', ARGV[2], ARGV[3], ARGV[4], 'COUNT',
  100, 'JUSTID')
local n = 0
for _, entry in ipairs(r[2]) do
  local id = entry_task(P, entry)
  if not id then
    redis.call('XACK', KEYS[1], 'agents', entry)
  else
    local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'entry')
    if not h[1] or h[1] == 'done' or h[2] ~= entry then
      drop_entry(P, entry)
    else
      requeue(P, id, entry, h[1] == 'running')
    end
  end
  n = n + 1
end
return {n, r[1]}
