-- Report a run's outcome, and say how late it is if beat gave the job up meanwhile.
-- (slots.lua is prepended: free_slot)
-- KEYS[1]  claim hash topchef:claim:<job>
-- KEYS[2]  lease topchef:lease:<job>
-- KEYS[3]  state stream topchef:state
-- KEYS[4]  the service's running set (slots.lua)
-- KEYS[5]  the service's parked set
-- KEYS[6]  the service's control hash
-- ARGV[1]  attempt
-- ARGV[2]  final entry (the state message's "m" field)
-- ARGV[3]  backstop ttl seconds of the ended claim
-- ARGV[4]  '1' if the handler never learnt of an abort: then a run with an
--          abort request is not ended here but answered {'aborted', at, by,
--          reason}, so the worker can say so in its outcome and finish again
--          (one round trip for the common end, which has no abort)
-- ARGV[5]  the name of the credential that signed the final entry (broker.trust.reports)
-- ARGV[6]  its signature, carried to the stream unchanged
-- Returns: {lateness, since}. lateness '' (on time), 'lost' or 'requeued' (beat
--   presumed the worker lost at since ms, and nothing ran again: this outcome
--   stands), 'superseded' (another attempt holds the job) or 'unknown' (the
--   claim is gone or already ended); since is '' unless lost or requeued. The
--   outcome goes on the stream in every case. Only an on-time end frees the
--   run's slot: beat freed a lost or re-queued one when it gave the run up.
-- Each branch appends to the stream before it changes anything: should the
-- stream refuse the entry (a forged last id exhausted it), the script fails
-- having changed nothing, and the caller reports again (Claims waits).
local state = redis.call('HGET', KEYS[1], 'state')
local mine = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') == tonumber(ARGV[1])
if mine and state == 'running' then
  if ARGV[4] == '1' then
    local abort = redis.call('HMGET', KEYS[1], 'abort_at', 'abort_by', 'abort_reason')
    if abort[1] then
      return {'aborted', abort[1], abort[2] or '', abort[3] or ''}
    end
  end
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'by', ARGV[5], 'sig', ARGV[6])
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[2])
  free_slot(KEYS[4], KEYS[5], KEYS[6], KEYS[1])
  return {'', ''}
end
if mine and (state == 'lost' or state == 'requeued') then
  local since = redis.call('HGET', KEYS[1], state .. '_at') or ''
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'by', ARGV[5], 'sig', ARGV[6], 'late', state,
    'since', since)
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {state, since}
end
local lateness = 'unknown'
if state == 'running' or state == 'requeued' then
  lateness = 'superseded'
end
redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'by', ARGV[5], 'sig', ARGV[6], 'late', lateness,
  'since', '')
return {lateness, ''}
