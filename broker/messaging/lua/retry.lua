-- End a run that asked for another attempt: the claim waits for attempt n+1.
-- (slots.lua is prepended: free_slot)
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  state stream topchef:state
-- KEYS[4]  the service's running set (slots.lua)
-- KEYS[5]  the service's parked set
-- KEYS[6]  the service's control hash
-- ARGV[1]  attempt
-- ARGV[2]  retry entry (the state message's "m" field)
-- ARGV[3]  the name of the credential that signed it (broker.trust.reports)
-- ARGV[4]  its signature, carried to the stream unchanged
-- Returns: 'retrying', or the claim's state when this attempt does not hold it
--   (beat presumed the worker lost meanwhile, or another attempt runs): the
--   caller then reports the run's end as an outcome instead (finish.lua), so
--   that nothing is dropped. A 'retrying' claim accepts attempt n+1 (claim.lua)
--   and may be cancelled while it waits (cancel.lua).
local state = redis.call('HGET', KEYS[1], 'state')
local mine = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') == tonumber(ARGV[1])
if not (mine and state == 'running') then
  return state or 'unclaimed'
end
-- Appended first: should the stream refuse the entry, nothing has changed.
redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'by', ARGV[3], 'sig', ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'retrying')
redis.call('DEL', KEYS[2])
-- The run ended: its slot frees, and the next parked job may start meanwhile.
free_slot(KEYS[4], KEYS[5], KEYS[6], KEYS[1])
return 'retrying'
