-- After an outage (Redis unreachable, or this instance taken for dead), an instance states the
-- members it still serves. ARGV: instance, grace in ms, then room, id, session for each.
-- Members still on that session are this instance's again (out of grace); members Redis lists
-- for this instance but the instance no longer serves go into grace. Returns the ids that are
-- gone (ended, or the whole state lost with a Redis restart) or moved to another connection:
-- {gone ids, moved ids}.
local instance = ARGV[1]
local now = now_ms()
local served = {}
local gone, moved = {}, {}
for i = 3, #ARGV, 3 do
  local room, id, session = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local m = prefix(room) .. 'm:' .. id
  local current = redis.call('HGET', m, 'session')
  if not current then
    gone[#gone + 1] = id
  elseif current ~= session then
    moved[#moved + 1] = id
  else
    served[room .. ' ' .. id] = true
    redis.call('HSET', m, 'owner', instance)
    redis.call('ZREM', 'sb:grace', room .. ' ' .. id)
    redis.call('SADD', 'sb:inst:' .. instance, room .. ' ' .. id)
  end
end
for _, entry in ipairs(redis.call('SMEMBERS', 'sb:inst:' .. instance)) do
  if not served[entry] then
    local room, id = string.match(entry, '^(%S+) (%S+)$')
    suspend(room, id, now + tonumber(ARGV[2]))
  end
end
return {gone, moved}
