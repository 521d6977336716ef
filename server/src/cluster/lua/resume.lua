-- A join with a resume token. ARGV: room, token, last_seq ("" when absent), instance, session,
-- new token. Returns {"none"} (unknown token: join fresh), {"trimmed"} (the messages after
-- last_seq are gone: the member ended, join fresh) or
-- {"ok", id, name, welcome seq, {peer id, name, ...}, {frame, ...}, budget, age} where the frames
-- are every message from welcome seq + 1 on, in order, and budget is what was left of the
-- member's rate budget when its last connection ended, age ms ago ("" and 0 if not known). The connection the member was on, wherever it is,
-- is told to close (4000).
local room, token, last, instance, session, new_token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local P = prefix(room)
local id = redis.call('GET', P .. 'tok:' .. token)
if not id then
  return {'none'}
end
local m = P .. 'm:' .. id
local f = redis.call('HMGET', m, 'name', 'owner', 'session', 'seq', 'written', 'budget', 'budget_at')
if not f[1] then
  return {'none'}
end
local latest = tonumber(f[4])
local start
if last == '' then
  start = tonumber(f[5]) + 1
elseif tonumber(last) >= latest then
  -- Above the latest: numbers this client may have had from an instance cut off from Redis
  -- (writeback.lua), not known here. Go on after them, so that none is given twice.
  if tonumber(last) > latest then
    latest = tonumber(last)
    redis.call('HSET', m, 'seq', latest)
  end
  start = latest + 1
else
  start = tonumber(last) + 1
  if #redis.call('XRANGE', P .. 'q:' .. id, start .. '-0', start .. '-0') == 0 then
    if f[2] ~= '' then
      redis.call('PUBLISH', 'sb:i:' .. f[2], 'k\n' .. room .. '\n' .. id .. '\n' .. f[3])
    end
    end_member(room, id)
    return {'trimmed'}
  end
end
if f[2] ~= '' then
  redis.call('PUBLISH', 'sb:i:' .. f[2], 'k\n' .. room .. '\n' .. id .. '\n' .. f[3])
  redis.call('SREM', 'sb:inst:' .. f[2], room .. ' ' .. id)
else
  release_grace(room, id, f[3])
end
redis.call('DEL', P .. 'tok:' .. token)
redis.call('SET', P .. 'tok:' .. new_token, id)
redis.call('HSET', m, 'token', new_token, 'owner', instance, 'session', session)
redis.call('ZREM', 'sb:grace', room .. ' ' .. id)
redis.call('SADD', 'sb:inst:' .. instance, room .. ' ' .. id)
local entries = redis.call('XRANGE', P .. 'q:' .. id, start .. '-0', '+')
local frames = {}
local first = latest + 1
for i, entry in ipairs(entries) do
  if i == 1 then
    first = tonumber(string.match(entry[1], '^(%d+)'))
  end
  frames[#frames + 1] = entry[2][2]
end
local others = {}
for _, other in ipairs(redis.call('ZRANGE', P .. 'members', 0, -1)) do
  if other ~= id then
    others[#others + 1] = other
  end
end
local budget, age = f[6] or '', 0
if f[7] then
  age = math.max(0, now_ms() - tonumber(f[7]))
end
return {'ok', id, f[1], first - 1, peers_of(P, others), frames, budget, age}
