-- The holder gives a claim back: the job is registered work again, unclaimed.
-- (slots.lua is prepended: free_slot)
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  state stream topchef:state
-- KEYS[4]  the service's running set (slots.lua)
-- KEYS[5]  the service's parked set
-- KEYS[6]  the service's control hash
-- ARGV[1]  attempt
-- ARGV[2]  worker
-- ARGV[3]  release entry (the state message's "m" field)
-- ARGV[4]  the name of the credential that signed it (broker.trust.reports)
-- ARGV[5]  its signature, carried to the stream unchanged
-- Returns: the number of the take given back (claim.lua's 'takes'; 0 for a claim
--   taken before takes were numbered), which the release entry carries too;
--   -1 if this worker's attempt does not hold the claim.
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
    or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2]
    or tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local take = tonumber(redis.call('HGET', KEYS[1], 'takes') or '0')
-- Appended first: should the stream refuse the entry, nothing has changed.
redis.call('XADD', KEYS[3], '*', 'm', ARGV[3], 'by', ARGV[4], 'sig', ARGV[5], 'take', take)
redis.call('HDEL', KEYS[1], 'state', 'attempt', 'worker')
redis.call('DEL', KEYS[2])
free_slot(KEYS[4], KEYS[5], KEYS[6], KEYS[1])
return take
