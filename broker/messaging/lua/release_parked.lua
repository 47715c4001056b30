-- Let a service's parked jobs go as far as its slots allow (a resume, a raised
-- max_running, and beat's safety net each tick).
-- (slots.lua is prepended: free_slots, release_parked)
-- KEYS[1]  the service's running set (slots.lua)
-- KEYS[2]  the service's parked set
-- KEYS[3]  the service's control hash
-- ARGV[1]  '1' to drop first the members of the running set whose claim no longer
--          runs (a slot a path that ended a run did not free)
-- Returns: {released, pruned}.
local pruned = 0
if ARGV[1] == '1' then
  for _, claim in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if redis.call('HGET', claim, 'state') ~= 'running' then
      redis.call('SREM', KEYS[1], claim)
      pruned = pruned + 1
    end
  end
end
return {release_parked(KEYS[2], free_slots(KEYS[1], KEYS[3])), pruned}
