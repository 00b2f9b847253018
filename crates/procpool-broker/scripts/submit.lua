-- submit: queue a task once. Idempotent: a task id already known and not finished is
-- attached to, not queued again (a retried submit, or the same dedupe id from two hosts).
-- KEYS[1] P:t:<id>  KEYS[2] the queue P:q:<name>  KEYS[3] P:e:<id>  KEYS[4] the submitter's inbox P:n:<client>
-- KEYS[5] P:w:<id>
-- ARGV[1] P  [2] id  [3] name  [4] args  [5] enc  [6] lost budget  [7] result TTL (ms)
--      [8] timeout (ms, 0 none)  [9] retries (-1: the agent's)  [10] protocol version
-- Returns 'new' or 'attach'.
local P, id = ARGV[1], ARGV[2]
local function watch()
  redis.call('SADD', KEYS[5], KEYS[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
local st = redis.call('HGET', KEYS[1], 'st')
if st and st ~= 'done' then
  -- The events so far are news to this submitter: point it at the stream.
  watch()
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 't', id)
  return 'attach'
end
if st then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[5], P .. ':r:' .. id)
end
watch()
ensure_queue(P, ARGV[3])
local entry = redis.call('XADD', KEYS[2], '*', 'id', id)
redis.call('HSET', KEYS[1], 'st', 'queued', 'name', ARGV[3], 'args', ARGV[4],
  'enc', ARGV[5], 'att', 0, 'lost', 0, 'budget', ARGV[6], 'ttl', ARGV[7],
  'tmo', ARGV[8], 'rty', ARGV[9], 'proto', ARGV[10], 'entry', entry, 'agent', '',
  'cancel', 0)
event(P, id, 'k', 'queued', 'a', 0)
return 'new'
