-- A fresh member. ARGV: room, id, name, token, instance, session, room size, peer_joined (open),
-- grace in ms (for retention).
-- Returns {"full"} or {"ok", {peer id, peer name, ...}} (the others, oldest first).
local room, id, name, token, instance, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local P = prefix(room)
if redis.call('ZCARD', P .. 'members') >= tonumber(ARGV[7]) then
  return {'full'}
end
local others = redis.call('ZRANGE', P .. 'members', 0, -1)
for _, other in ipairs(others) do
  deliver(room, other, ARGV[8])
end
redis.call('ZADD', P .. 'members', redis.call('INCR', P .. 'order'), id)
redis.call('HSET', P .. 'm:' .. id, 'name', name, 'token', token, 'owner', instance,
  'session', session, 'seq', 0, 'written', 0, 'grace', tonumber(ARGV[9]))
redis.call('SET', P .. 'tok:' .. token, id)
redis.call('SADD', 'sb:inst:' .. instance, room .. ' ' .. id)
return {'ok', peers_of(P, others)}
