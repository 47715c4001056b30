-- Forbid every delivery of a job from running it, unless one already has.
-- KEYS[1]  claim hash topchef:claim:<job>
-- ARGV[1]  claim ttl seconds
-- Returns: 'cancelled' (now or already), or the state of the claim a delivery took.
local state = redis.call('HGET', KEYS[1], 'state')
-- A job waiting for its retry ('retrying', retry.lua) has no run to protect.
if state and state ~= 'cancelled' and state ~= 'retrying' then
  return state
end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'cancelled'
