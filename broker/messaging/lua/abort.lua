-- Ask a running job's handler to stop (an abort), recording who asked, why and when.
-- KEYS[1]  claim hash topchef:claim:<job>
-- ARGV[1]  reason ('' for none)
-- ARGV[2]  who asks (broker.actors)
-- Returns: {'requested', at ms} (recorded now, on Redis's clock), {'already', at ms}
--   (an abort was requested before: the first one stands), or {state, ''} when the
--   claim is not running ('unclaimed' if no delivery took it).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then
  return {state or 'unclaimed', ''}
end
local since = redis.call('HGET', KEYS[1], 'abort_at')
if since then
  return {'already', since}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'abort_at', now_ms, 'abort_by', ARGV[2], 'abort_reason', ARGV[1])
return {'requested', tostring(now_ms)}
