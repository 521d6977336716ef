-- An instance's heartbeat. ARGV: instance, TTL in ms. Returns 1 if the instance was already
-- known alive, 0 if it (re)appears (first beat, or it was taken for dead meanwhile).
local instance = ARGV[1]
local was = redis.call('SET', 'sb:alive:' .. instance, '1', 'PX', tonumber(ARGV[2]), 'GET')
redis.call('SADD', 'sb:instances', instance)
if was then
  return 1
end
return 0
