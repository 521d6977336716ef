-- `leave`. ARGV: room, id, session. Ends the member if that connection still holds it.
local room, id, session = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', prefix(room) .. 'm:' .. id, 'session') ~= session then
  return 0
end
return end_member(room, id)
