-- Prepended to every Switchboard script. The keys of room R all start with P = "sb:{R}:" (one
-- hash slot per room, so the keyspace can be split by room); instance keys are "sb:alive:I"
-- (the heartbeat, with a TTL), "sb:inst:I" (the "room id" of every member connected there) and
-- the sets "sb:instances" and "sb:grace" (members in grace, scored by their deadline in ms).
--
-- A member M of R: "P m:M" (hash: name, token, owner = instance or "" while in grace, session =
-- the connection it was last on, seq = the latest number given, written = the latest number its
-- last connection surely wrote, grace = the grace period in ms, mark_seq/mark_at = retention), "P q:M" (stream: its numbered messages, entry id "seq-0", field
-- f = the frame), "P tok:T" (its resume token). "P members" orders the room (zset, join order),
-- "P order" counts joins.

local RETAIN = 8192

local function prefix(room)
  return 'sb:{' .. room .. '}:'
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers `open` (a JSON object without its closing brace) with the member's next seq, keeps it
-- in the member's stream and hands it to the instance the member is connected to, if any
-- ("d room id seq frame" on the instance's channel).
--
-- Retention: the stream keeps at least the messages of the last grace period (PROTOCOL.md), and
-- not much more. The member's hash holds a mark (mark_seq, the latest seq when it was set, and
-- mark_at); once a grace period has passed since the mark, the messages up to it (all numbered
-- at least a grace period ago) are trimmed and the mark moves to now. So a message is kept one
-- to two grace periods while messages keep coming, and at most RETAIN entries in any case.
local function deliver(room, id, open)
  local P = prefix(room)
  local m = P .. 'm:' .. id
  local q = P .. 'q:' .. id
  local seq = redis.call('HINCRBY', m, 'seq', 1)
  local frame = open .. ',"seq":' .. seq .. '}'
  redis.call('XADD', q, 'MAXLEN', '~', RETAIN, seq .. '-0', 'f', frame)
  local f = redis.call('HMGET', m, 'owner', 'grace', 'mark_seq', 'mark_at')
  local owner = f[1]
  if f[2] then
    local now = now_ms()
    if not f[4] then
      redis.call('HSET', m, 'mark_seq', seq - 1, 'mark_at', now)
    elseif now - tonumber(f[4]) >= tonumber(f[2]) then
      redis.call('XTRIM', q, 'MINID', (tonumber(f[3]) + 1) .. '-0')
      redis.call('HSET', m, 'mark_seq', seq - 1, 'mark_at', now)
    end
  end
  if owner and owner ~= '' then
    redis.call('PUBLISH', 'sb:i:' .. owner, 'd\n' .. room .. '\n' .. id .. '\n' .. seq .. '\n' .. frame)
  end
  return seq
end

-- The instance of a session ("instance:connection").
local function instance_of(session)
  return string.match(session or '', '^(.*):[^:]*$')
end

-- Tells the instance a member in grace left that it no longer holds the member's place (it
-- counted it against its client's caps): "k room id session" on its channel.
local function release_grace(room, id, session)
  local holder = instance_of(session)
  if holder then
    redis.call('PUBLISH', 'sb:i:' .. holder, 'k\n' .. room .. '\n' .. id .. '\n' .. session)
  end
end

-- Removes the member everywhere and tells the rest of its room (peer_left).
local function end_member(room, id)
  local P = prefix(room)
  local m = P .. 'm:' .. id
  local f = redis.call('HMGET', m, 'token', 'owner', 'session')
  if not f[1] then
    return 0
  end
  if f[2] == '' then
    release_grace(room, id, f[3])
  end
  redis.call('DEL', m, P .. 'q:' .. id, P .. 'tok:' .. f[1])
  redis.call('ZREM', P .. 'members', id)
  redis.call('ZREM', 'sb:grace', room .. ' ' .. id)
  if f[2] and f[2] ~= '' then
    redis.call('SREM', 'sb:inst:' .. f[2], room .. ' ' .. id)
  end
  local rest = redis.call('ZRANGE', P .. 'members', 0, -1)
  if #rest == 0 then
    redis.call('DEL', P .. 'members', P .. 'order')
  else
    for _, other in ipairs(rest) do
      deliver(room, other, '{"type":"peer_left","id":"' .. id .. '"')
    end
  end
  return 1
end

-- The member's connection is gone: it keeps its place until `deadline` (ms, Redis clock).
local function suspend(room, id, deadline)
  local m = prefix(room) .. 'm:' .. id
  local owner = redis.call('HGET', m, 'owner')
  if not owner then
    return
  end
  if owner ~= '' then
    redis.call('SREM', 'sb:inst:' .. owner, room .. ' ' .. id)
  end
  redis.call('HSET', m, 'owner', '')
  redis.call('ZADD', 'sb:grace', deadline, room .. ' ' .. id)
end

local function peers_of(P, ids)
  local peers = {}
  for _, other in ipairs(ids) do
    peers[#peers + 1] = other
    peers[#peers + 1] = redis.call('HGET', P .. 'm:' .. other, 'name')
  end
  return peers
end
