-- Who took each take of each claim: the mirror starts a hold only for the
-- credential that took the claim (broker.mirror.holders). One call for a
-- whole reading, where a command per report cost the mirror more than its check.
-- KEYS[i]  claim hash topchef:claim:<job i>
-- ARGV[i]  the take of job i asked about
-- Returns: for each job, the name claim.lua recorded for that take ('by:<take>'), or nil.
local takers = {}
for i = 1, #KEYS do
  takers[i] = redis.call('HGET', KEYS[i], 'by:' .. ARGV[i])
end
return takers
