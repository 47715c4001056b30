-- Take a job for one delivery and report it WORKING, or say why not.
-- (slots.lua is prepended: free_slots)
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  state stream topchef:state
-- KEYS[4]  the service's running set (slots.lua)
-- KEYS[5]  the service's parked set
-- KEYS[6]  the service's control hash
-- KEYS[7]  the service's parked-arrivals counter
-- ARGV[1]  attempt
-- ARGV[2]  worker
-- ARGV[3]  lease ms
-- ARGV[4]  WORKING entry (the state message's "m" field)
-- ARGV[5]  service id
-- ARGV[6]  parameters digest ('' when the caller read the job from SQL itself)
-- ARGV[7]  trusted: '1' when the caller read the job from SQL and may register it
-- ARGV[8]  settle seconds (the duplicate window)
-- ARGV[9]  the delivery's message, to park it with ('' if the caller has not encoded it)
-- ARGV[10] the queue list a parked message goes back to
-- ARGV[11] the job's priority (0-9, higher first)
-- ARGV[12] the name of the credential that signed the WORKING entry (broker.trust.reports)
-- ARGV[13] its signature, carried to the stream unchanged
-- Each take of a claim is numbered ('takes'), and its WORKING entry carries the
-- number ('take'), so that the mirror can tell the report of a take its holder
-- gave back since (release.lua) from one of the take that runs now.
-- Returns: 'claimed'; or the claim's state that makes this delivery a duplicate
--   ('running', 'done', 'cancelled', 'requeued', 'retrying', 'lost'); or a refusal
--   ('unregistered', 'misrouted', 'altered'); or, when the service may not
--   start a job now (held, or at its max_running): 'parked' (the message is kept
--   in the parked set until a slot frees or the service resumes), 'must_park'
--   (call again with ARGV[9]), 'deferred' (a trusted caller: nothing changed).
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
-- The job may run; may the service start one now?
if free_slots(KEYS[4], KEYS[6]) == 0 then
  if ARGV[7] == '1' then
    return 'deferred'
  end
  if ARGV[9] == '' then
    return 'must_park'
  end
  -- A job parked again keeps its place: its first arrival orders it.
  local seq = redis.call('HGET', KEYS[1], 'parked_seq')
  if not seq then
    seq = redis.call('INCR', KEYS[7])
  end
  redis.call('HSET', KEYS[1], 'parked', attempt, 'parked_seq', seq, 'parked_to', ARGV[10],
    'parked_message', ARGV[9], 'parked_in', KEYS[5])
  redis.call('ZADD', KEYS[5], (9 - tonumber(ARGV[11])) * 1e12 + tonumber(seq), KEYS[1])
  return 'parked'
end
-- Appended first: should the stream refuse the entry, nothing has changed.
local take = tonumber(redis.call('HGET', KEYS[1], 'takes') or '0') + 1
redis.call('XADD', KEYS[3], '*', 'm', ARGV[4], 'by', ARGV[12], 'sig', ARGV[13], 'take', take)
if redis.call('HEXISTS', KEYS[1], 'parked') == 1 then
  -- A duplicate of a parked delivery came when it could start: the parked one is not needed.
  redis.call('ZREM', KEYS[5], KEYS[1])
  redis.call('HDEL', KEYS[1], 'parked', 'parked_message')
end
-- Who took it, by take ('by:<take>'): the mirror starts a hold only for the
-- credential that took it (takers.lua).
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', attempt, 'worker', ARGV[2],
  'takes', take, 'by:' .. take, ARGV[12])
redis.call('PERSIST', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[4], KEYS[1])
return 'claimed'
