-- Forbid every delivery of a job from running it, unless one already has.
-- KEYS[1]  claim hash topchef:claim:<job>
-- ARGV[1]  claim ttl seconds
-- Returns: 'cancelled' (now or already), or the state of the claim a delivery took.
local state = redis.call('HGET', KEYS[1], 'state')
-- A job waiting for its retry ('retrying', retry.lua) has no run to protect.
if state and state ~= 'cancelled' and state ~= 'retrying' then
  return state
end
local parked_in = redis.call('HGET', KEYS[1], 'parked_in')
if parked_in then
  -- A parked job waits for its service; cancelled, it leaves the parked set.
  redis.call('ZREM', parked_in, KEYS[1])
  redis.call('HDEL', KEYS[1], 'parked', 'parked_message')
end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'cancelled'
