-- The connection ended without `leave`. ARGV: room, id, session, written (the latest seq its
-- writer surely wrote), grace in ms, what is left of its rate budget ("" if nothing to say).
-- Ignored if the member has moved to another connection.
local room, id, session = ARGV[1], ARGV[2], ARGV[3]
local m = prefix(room) .. 'm:' .. id
if redis.call('HGET', m, 'session') ~= session then
  return 0
end
local written = tonumber(ARGV[4])
if written > tonumber(redis.call('HGET', m, 'written') or '0') then
  redis.call('HSET', m, 'written', written)
end
local now = now_ms()
if ARGV[6] ~= '' then
  redis.call('HSET', m, 'budget', ARGV[6], 'budget_at', now)
end
suspend(room, id, now + tonumber(ARGV[5]))
return 1
