-- Signals an instance relayed among its own members while it could not reach Redis. ARGV:
-- room, id, session (the member's connection then), first (the seq the instance gave the first),
-- then the frames, numbered first, first + 1, ... Returns "ok", "done" (this very write-back
-- already ran: a retry after a lost reply), "gone" (the member ended, or Redis lost it) or
-- "moved" (it resumed on another connection meanwhile: these frames can no longer be its).
--
-- Whatever Redis numbered for the member from `first` on while the instance was cut off never
-- reached the member (the instance drops those numbers while it holds a log): such entries
-- are taken out of the stream, the instance's frames go in at their numbers, and the taken
-- entries follow, renumbered, in the order Redis had them. So the member's numbers stay one
-- sequence with no gap and nothing twice, and each sender's order holds (a sender's signals
-- are all local, or all through Redis, while the instance is cut off).
local room, id, session, first = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local P = prefix(room)
local m = P .. 'm:' .. id
local q = P .. 'q:' .. id
local f = redis.call('HMGET', m, 'session', 'seq', 'writeback')
if not f[1] then
  return 'gone'
end
if f[1] ~= session then
  return 'moved'
end
local count = #ARGV - 4
local mark = session .. ':' .. first .. ':' .. count
if f[3] == mark then
  return 'done'
end
local taken = {}
if tonumber(f[2]) >= first then
  for _, entry in ipairs(redis.call('XRANGE', q, first .. '-0', '+')) do
    taken[#taken + 1] = entry[2][2]
    redis.call('XDEL', q, entry[1])
  end
  if redis.call('EXISTS', q) == 1 then
    redis.call('XSETID', q, (first - 1) .. '-0')
  end
end
for i = 1, count do
  redis.call('XADD', q, 'MAXLEN', '~', RETAIN, (first + i - 1) .. '-0', 'f', ARGV[4 + i])
end
local seq = first + count - 1
for _, frame in ipairs(taken) do
  seq = seq + 1
  local open = string.match(frame, '^(.*),"seq":%d+}$')
  redis.call('XADD', q, 'MAXLEN', '~', RETAIN, seq .. '-0', 'f', open .. ',"seq":' .. seq .. '}')
end
redis.call('HSET', m, 'seq', seq, 'writeback', mark)
return 'ok'
