-- take: an agent reads up to COUNT new entries, without waiting, from the queues of the
-- tasks it serves, in the order given (the agent rotates it, so no queue starves). Used
-- while several of its queues hold entries: one XREADGROUP over several streams returns
-- up to COUNT from each, more than the agent has slots for.
-- KEYS the queues P:q:<name>
-- ARGV[1] agent  [2] count
-- Returns the entries as XREADGROUP does: {{queue, {{entry, fields}, ...}}, ...}.
local left = tonumber(ARGV[2])
local out = {}
for _, q in ipairs(KEYS) do
  if left <= 0 then break end
  -- An empty queue (the usual case for most of the names an agent serves) is skipped
  -- at the cost of an XLEN: entries leave a queue with their task's end.
  if redis.call('XLEN', q) > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', 'agents', ARGV[1], 'COUNT', left,
      'STREAMS', q, '>')
    if r then
      out[#out + 1] = r[1]
      left = left - #r[1][2]
    end
  end
end
return out
