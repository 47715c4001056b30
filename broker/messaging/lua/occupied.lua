-- Which services have a job running or parked: the ones beat's release of
-- parked jobs must visit (one command, however many services).
-- KEYS[i]  for each service in turn, its running set and then its parked set
-- Returns: the positions (1 for the first service) of those with either set non-empty.
local found = {}
local used = false
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    used = true
  end
  if i % 2 == 0 then
    if used then
      found[#found + 1] = i / 2
    end
    used = false
  end
end
return found
