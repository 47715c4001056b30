-- SQL has recorded these jobs' ends: keep their ended claims one duplicate window more.
-- KEYS[i]  claim hash topchef:claim:<job i>, one per job SQL has recorded as ended
-- ARGV[1]  window seconds
-- Returns: the number of claims looked at (#KEYS).
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'done' or state == 'cancelled' or state == 'lost' then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  end
end
return #KEYS
