-- A signal. ARGV: room, from, session (the sender's connection), to, frame (open, no seq).
-- Returns the seq it got, -1 when the sender is no longer a member on that connection, -2 when
-- `to` is not another member of the room.
local room, from, session, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local P = prefix(room)
if redis.call('HGET', P .. 'm:' .. from, 'session') ~= session then
  return -1
end
if to == from or redis.call('EXISTS', P .. 'm:' .. to) == 0 then
  return -2
end
return deliver(room, to, ARGV[5])
