-- Helpers shared by every script: prepended to each one when it is loaded (never run
-- alone). Every key is derived from the namespace prefix P ("{ns}"), so all of a
-- namespace's keys share one hash tag and live in one Redis Cluster slot.
--   P:q:<name>   the queue of the tasks named <name>: a stream with the consumer group
--                "agents", never trimmed. An agent reads only the queues of the tasks it
--                serves, so a task never reaches an agent that cannot run it; one whose
--                serving agents all left waits in its queue for the next one.
--   P:names      the task names that have a queue (the reaper looks for a dead agent's
--                entries in each)
--   P:t:<id>     task hash: st (queued|running|done), name, args, enc, att (attempt),
--                lost, budget, agent, cancel, ttl (ms), tmo (ms), rty, proto, entry
--   P:e:<id>     task event stream, read by submitters from their last id
--   P:r:<id>     result ("ok:" .. bytes or "err:" .. error JSON), with a TTL
--   P:a:<agent>  agent liveness key with a short TTL; P:agents the set of agent ids
--                (its TTL: the longest lease of a live agent)
--   P:in:<id>    messages to a running task; P:ctl the notification channel
--   P:w:<id>     the inboxes of the submitters watching a task (a cancel from one of
--                them only lets go while others remain)
--   P:n:<client> a submitter's inbox: one entry (t = task id) per event of a task it
--                watches, so it reads only the event streams that moved
local function queue(P, name)
  return P .. ':q:' .. (name or '')
end

-- Makes the queue of `name` (with its group, reading from the start) unless it is known.
local function ensure_queue(P, name)
  if redis.call('SADD', P .. ':names', name) == 1 then
    redis.pcall('XGROUP', 'CREATE', queue(P, name), 'agents', '0', 'MKSTREAM')
  end
end

local function drop_entry(q, entry)
  redis.call('XACK', q, 'agents', entry)
  redis.call('XDEL', q, entry)
end

-- Moves a task to a fresh entry at the end of its queue q (the old one acked and
-- deleted), for any agent serving it to read.
local function move_entry(t, q, old, id)
  drop_entry(q, old)
  local entry = redis.call('XADD', q, '*', 'id', id)
  redis.call('HSET', t, 'st', 'queued', 'entry', entry, 'agent', '')
end

local function event(P, id, ...)
  redis.call('XADD', P .. ':e:' .. id, 'MAXLEN', '~', 1000, '*', ...)
  local inboxes = redis.call('SMEMBERS', P .. ':w:' .. id)
  if #inboxes == 0 then return end
  -- An inbox lives as long as the results of its tasks (a dead submitter's goes too).
  local ttl = redis.call('HGET', P .. ':t:' .. id, 'ttl') or 3600000
  for _, inbox in ipairs(inboxes) do
    redis.call('XADD', inbox, 'MAXLEN', '~', 100000, '*', 't', id)
    redis.call('PEXPIRE', inbox, ttl)
  end
end

-- Ends a task for good: state, result with its TTL, terminal event, queue entry acked
-- and deleted. status is 'ok' (value: result bytes) or 'err' (value: error JSON).
local function finish(P, id, att, status, value)
  local t = P .. ':t:' .. id
  local h = redis.call('HMGET', t, 'entry', 'ttl', 'name')
  local ttl = tonumber(h[2]) or 3600000
  redis.call('HSET', t, 'st', 'done', 'status', status)
  redis.call('PEXPIRE', t, ttl)
  redis.call('SET', P .. ':r:' .. id, status .. ':' .. value, 'PX', ttl)
  event(P, id, 'k', 'done', 'a', att, 's', status, 'v', value)
  redis.call('PEXPIRE', P .. ':e:' .. id, ttl)
  redis.call('PEXPIRE', P .. ':w:' .. id, ttl)
  if h[1] and h[1] ~= '' then drop_entry(queue(P, h[3]), h[1]) end
  redis.call('DEL', P .. ':in:' .. id)
end

-- Puts a task back in its queue under a fresh entry (the old one acked and deleted).
-- count_lost: the attempt died with its agent; at the task's budget it ends as `lost`.
local function requeue(P, id, old, count_lost)
  local t = P .. ':t:' .. id
  local h = redis.call('HMGET', t, 'att', 'lost', 'budget', 'name')
  local att = tonumber(h[1]) or 0
  local lost = tonumber(h[2]) or 0
  if count_lost then lost = lost + 1 end
  redis.call('HSET', t, 'lost', lost)
  if count_lost and lost >= (tonumber(h[3]) or 3) then
    finish(P, id, att, 'err', cjson.encode({kind = 'lost', message =
      'the agents running it died ' .. lost .. ' times (a task that kills its agent?)'}))
    return 'lost'
  end
  move_entry(t, queue(P, h[4]), old, id)
  event(P, id, 'k', 'requeued', 'a', att)
  return 'requeued'
end

-- The task id of an entry of queue q, or nil when the entry is gone.
local function entry_task(q, entry)
  local r = redis.call('XRANGE', q, entry, entry)
  if #r == 0 then return nil end
  local fields = r[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then return fields[i + 1] end
  end
  return nil
end

-- Requeues (or drops, when stale) an entry of queue q pending on a consumer that will
-- not run it. count_lost: whether a started attempt of `agent` counts as lost (nil:
-- any started attempt does).
local function reclaim(P, q, entry, agent)
  local id = entry_task(q, entry)
  if not id then
    redis.call('XACK', q, 'agents', entry)
    return
  end
  local h = redis.call('HMGET', P .. ':t:' .. id, 'st', 'entry', 'agent', 'name')
  if not h[1] or h[1] == 'done' or h[2] ~= entry or queue(P, h[4]) ~= q then
    drop_entry(q, entry)
  else
    requeue(P, id, entry, h[1] == 'running' and (agent == nil or h[3] == agent))
  end
end
