-- Renew the leases of a service's jobs still running over HTTP; forget the others.
-- KEYS[1]     set of the service's HTTP-held jobs topchef:http-jobs:<service>
-- KEYS[2i]    claim hash topchef:claim:<job i>
-- KEYS[2i+1]  lease topchef:lease:<job i>
-- ARGV[1]     lease ms
-- ARGV[i+1]   id of job i (a member of KEYS[1])
-- Returns: how many jobs were dropped from the set (their claim is no longer
--   running under an 'http:' worker, broker.gateway.dispatch.HTTP_PREFIX).
local dropped = 0
for i = 1, #ARGV - 1 do
  local claim = KEYS[2 * i]
  local state = redis.call('HGET', claim, 'state')
  local worker = redis.call('HGET', claim, 'worker')
  if state == 'running' and worker and string.sub(worker, 1, 5) == 'http:' then
    redis.call('SET', KEYS[2 * i + 1], worker, 'PX', ARGV[1])
  else
    redis.call('SREM', KEYS[1], ARGV[i + 1])
    dropped = dropped + 1
  end
end
return dropped
