-- What is left of a member's rate budget ("messages,bytes,refusals" tokens), stored when it goes
-- over budget so that a resume on any instance goes on with it. ARGV: room, id, session (the
-- connection that spent it), budget. Ignored if the member has moved to another connection.
local room, id, session = ARGV[1], ARGV[2], ARGV[3]
local m = prefix(room) .. 'm:' .. id
if redis.call('HGET', m, 'session') ~= session then
  return 0
end
redis.call('HSET', m, 'budget', ARGV[4], 'budget_at', now_ms())
return 1
