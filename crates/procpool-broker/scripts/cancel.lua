-- cancel: durable cancel. A queued task ends `cancelled` at once and never runs; a
-- running one gets the flag (read by its agent on every renewal) and a notification.
-- KEYS[1] P:t:<id>
-- ARGV[1] P  [2] id
-- Returns 0 unknown or finished, 1 cancelled while queued, 2 flagged while running.
local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', KEYS[1], 'st', 'att')
if not h[1] or h[1] == 'done' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
if h[1] == 'queued' then
  finish(P, id, h[2], 'err', '{"kind":"cancelled"}')
  return 1
end
redis.call('PUBLISH', P .. ':ctl', 'c ' .. id)
return 2
