-- Decide the fate of a WORKING job whose lease may have lapsed (beat).
-- (slots.lua is prepended: free_slot)
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  the service's running set (slots.lua)
-- KEYS[4]  the service's parked set
-- KEYS[5]  the service's control hash
-- ARGV[1]  requeue: '1' when the service re-queues lost jobs, '0' when it fails them
-- ARGV[2]  max attempts
-- ARGV[3]  stale ms (a re-queued attempt nobody took for this long is handed out again)
-- Returns: {verdict, attempt}; verdict 'alive' | 'requeue' | 'fail' | 'exhausted',
--   or the claim's own state ('unclaimed' if none) when it is not running.
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if state == 'requeued' then
  if redis.call('HEXISTS', KEYS[1], 'parked') == 1 then
    -- The next attempt was delivered, and waits parked for its service: not lost.
    return {'alive', attempt}
  end
  local since = tonumber(redis.call('HGET', KEYS[1], 'requeued_at') or '0')
  if now_ms - since < tonumber(ARGV[3]) then
    return {'alive', attempt}
  end
  redis.call('HSET', KEYS[1], 'requeued_at', now_ms)
  return {'requeue', attempt + 1}
end
if state ~= 'running' then
  return {state or 'unclaimed', attempt}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'alive', attempt}
end
-- The run is given up either way: its slot is free for the next job.
free_slot(KEYS[3], KEYS[4], KEYS[5], KEYS[1])
if ARGV[1] == '1' and attempt < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'requeued', 'requeued_at', now_ms)
  return {'requeue', attempt + 1}
end
redis.call('HSET', KEYS[1], 'state', 'lost', 'lost_at', now_ms)
if ARGV[1] == '1' then
  return {'exhausted', attempt}
end
return {'fail', attempt}
