-- Record a chunk of one service's jobs as registered work.
-- KEYS[i]    claim hash topchef:claim:<job i>, one per job of the chunk
-- ARGV[1]    service id
-- ARGV[i+1]  parameters digest of job i
-- Returns: the number of jobs registered (#KEYS).
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'service', ARGV[1], 'digest', ARGV[i + 1])
end
return #KEYS
