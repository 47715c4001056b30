-- Take a job for one delivery and report it WORKING, or say why not.
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  state stream topchef:state
-- ARGV[1]  attempt
-- ARGV[2]  worker
-- ARGV[3]  lease ms
-- ARGV[4]  WORKING entry (the state message's "m" field)
-- ARGV[5]  service id
-- ARGV[6]  parameters digest ('' when the caller read the job from SQL itself)
-- ARGV[7]  trusted: '1' when the caller read the job from SQL and may register it
-- ARGV[8]  settle seconds (the duplicate window)
-- Returns: 'claimed'; or the claim's state that makes this delivery a duplicate
--   ('running', 'done', 'cancelled', 'requeued', 'retrying', 'lost'); or a refusal
--   ('unregistered', 'misrouted', 'altered').
local service = redis.call('HGET', KEYS[1], 'service')
if not service then
  if ARGV[7] ~= '1' then
    return 'unregistered'
  end
  redis.call('HSET', KEYS[1], 'service', ARGV[5])
elseif service ~= ARGV[5] then
  return 'misrouted'
end
local digest = redis.call('HGET', KEYS[1], 'digest')
if ARGV[6] ~= '' and digest and digest ~= ARGV[6] then
  return 'altered'
end
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(ARGV[1])
if state then
  local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  if not ((state == 'requeued' or state == 'retrying') and attempt == current + 1) then
    if state == 'done' or state == 'cancelled' or state == 'lost' then
      -- This delivery consumed a duplicate; later ones come within the window.
      local ttl = redis.call('TTL', KEYS[1])
      if ttl < 0 or ttl > tonumber(ARGV[8]) then
        redis.call('EXPIRE', KEYS[1], ARGV[8])
      end
    end
    return state
  end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', attempt, 'worker', ARGV[2])
redis.call('PERSIST', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[4])
return 'claimed'
