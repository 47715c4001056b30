-- End one run of a batch and claim the batch's next job, in one round trip.
-- (slots.lua is prepended, and finish.lua and claim.lua as the functions
-- finish(KEYS, ARGV) and claim(KEYS, ARGV): see claims.py)
-- KEYS: finish.lua's 6, for the run that ended, then claim.lua's 7, for the next job
-- ARGV: finish.lua's 6, then claim.lua's 13
-- Returns: {finish's answer, claim's answer}. The claim is not tried ('') when
--   the finish answered 'aborted': that run has not ended, and its slot is still
--   taken, so the caller finishes it first and claims after.
local ended = finish({unpack(KEYS, 1, 6)}, {unpack(ARGV, 1, 6)})
if ended[1] == 'aborted' then
  return {ended, ''}
end
return {ended, claim({unpack(KEYS, 7, 13)}, {unpack(ARGV, 7, 19)})}
