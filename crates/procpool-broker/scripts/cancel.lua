-- cancel: a submitter lets go of a task. While other submitters still watch it (the
-- same dedupe id from other hosts) it runs on for them. Otherwise the cancel is durable:
-- a queued task ends `cancelled` at once and never runs; a running one gets the flag
-- (read by its agent on every renewal) and a notification. An operator's cancel (no
-- inbox: `procpool ctl cancel` on an agent) is durable whoever watches the task.
-- KEYS[1] P:t:<id>  KEYS[2] P:w:<id>
-- ARGV[1] P  [2] id  [3] the submitter's inbox P:n:<client>, or '' for an operator
-- Returns 0 unknown or finished, 1 cancelled while queued, 2 flagged while running,
-- 3 let go (others still watch it).
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'att')
if not h[1] or h[1] == 'done' then return 0 end
-- Another submitter still watching: this one alone lets go. The last one stays a
-- watcher, so the terminal event below (or its agent's) is announced to it.
if ARGV[3] ~= ''
    and redis.call('SCARD', KEYS[2]) - redis.call('SISMEMBER', KEYS[2], ARGV[3]) > 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
  return 3
end
redis.call('HSET', KEYS[1], 'cancel', 1)
if h[1] == 'queued' then
  finish(P, id, h[2], 'err', '{"kind":"cancelled"}')
  return 1
end
redis.call('PUBLISH', P .. ':ctl', 'c ' .. id)
return 2
