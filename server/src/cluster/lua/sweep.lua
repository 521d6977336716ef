-- Run by every live instance every few hundred ms. ARGV: grace in ms.
-- 1. An instance whose heartbeat expired is dead: its members go into grace from now.
-- 2. Members whose grace ran out end (their rooms get peer_left).
-- Returns how many members ended.
local grace = tonumber(ARGV[1])
local now = now_ms()
for _, instance in ipairs(redis.call('SMEMBERS', 'sb:instances')) do
  if redis.call('EXISTS', 'sb:alive:' .. instance) == 0 then
    for _, entry in ipairs(redis.call('SMEMBERS', 'sb:inst:' .. instance)) do
      local room, id = string.match(entry, '^(%S+) (%S+)$')
      suspend(room, id, now + grace)
    end
    redis.call('DEL', 'sb:inst:' .. instance)
    redis.call('SREM', 'sb:instances', instance)
  end
end
local due = redis.call('ZRANGEBYSCORE', 'sb:grace', '-inf', now, 'LIMIT', 0, 1000)
for _, entry in ipairs(due) do
  local room, id = string.match(entry, '^(%S+) (%S+)$')
  redis.call('ZREM', 'sb:grace', entry)
  end_member(room, id)
end
return #due
