-- autoclaim: requeue the entries whose lease ran out, in the queues of the tasks the
-- calling agent serves. Every renewal of a live agent resets the idle time of the
-- entries it runs, so an entry idle past the lease belongs to an agent that is gone
-- (before the reaper saw its liveness key expire), stalled (it missed its renewals: it
-- kills its workers itself), or no longer running the task (it killed it and stopped
-- renewing it), or was read and never started. Run by every agent's reaper, so a lease
-- is handed on within about the lease plus a reaper period. A queue no live agent
-- serves is left alone: its entries wait for one, whose reaper then requeues them.
-- KEYS the queues P:q:<name>
-- ARGV[1] P  [2] consumer name of the reaper  [3] min idle: the lease (ms)
--      then the scan cursor of each queue, in the order of KEYS
-- Returns {number of entries requeued or dropped, then the next cursor of each queue}.
local P = ARGV[1]
local n = 0
local cursors = {}
for i, q in ipairs(KEYS) do
  local r = redis.pcall('XAUTOCLAIM', q, 'agents', ARGV[2], ARGV[3], ARGV[3 + i], 'COUNT',
    100, 'JUSTID')
  if type(r) == 'table' and not r.err then
    for _, entry in ipairs(r[2]) do
      reclaim(P, q, entry, nil)
      n = n + 1
    end
    cursors[i] = r[1]
  else
    -- No group (yet): the agent's next fetch makes it.
    cursors[i] = '0-0'
  end
end
return {n, unpack(cursors)}
