-- start: an agent read a queue entry; claim the task for a new attempt, or drop an entry
-- that is stale (task finished, vanished, requeued under another entry) or cancelled.
-- KEYS[1] the queue the entry was read from, P:q:<name>  KEYS[2] P:t:<id>
-- ARGV[1] P  [2] id  [3] entry  [4] agent  [5] the agent's frame cap (bytes)
-- Returns {} (nothing to run) or {attempt, name, args, enc, timeout, retries, proto,
-- messages}: the messages sent before the start are taken with it.
-- A task too large for the agent ends with a protocol error here: its bytes never
-- reach the agent.
local P, id, entry, agent = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local h = redis.call('HMGET', KEYS[2], 'st', 'entry', 'cancel', 'att', 'name', 'args',
  'enc', 'tmo', 'rty', 'proto')
if not h[1] or h[1] == 'done' or h[2] ~= entry or queue(P, h[5]) ~= KEYS[1] then
  drop_entry(KEYS[1], entry)
  return {}
end
if h[3] == '1' then
  finish(P, id, h[4], 'err', '{"kind":"cancelled"}')
  return {}
end
if h[1] ~= 'queued' then return {} end
local att = (tonumber(h[4]) or 0) + 1
if redis.call('HSTRLEN', KEYS[2], 'args') > tonumber(ARGV[5])
    or redis.call('HSTRLEN', KEYS[2], 'name') > 4096 then
  redis.call('HSET', KEYS[2], 'att', att)
  finish(P, id, att, 'err', cjson.encode({kind = 'protocol', text =
    'the task is larger than the agent\'s frame cap of ' .. ARGV[5] .. ' bytes'}))
  return {}
end
redis.call('HSET', KEYS[2], 'st', 'running', 'agent', agent, 'att', att)
local inbox = P .. ':in:' .. id
local messages = {}
for _, m in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
  -- As take_messages: one above the frame cap never reaches the agent.
  if #m <= tonumber(ARGV[5]) then messages[#messages + 1] = m end
end
redis.call('DEL', inbox)
return {att, h[5], h[6], h[7], h[8], h[9], h[10], messages}
