-- Record, renew or withdraw one worker's presence on services; count who is left.
-- KEYS[i]  presence sorted set topchef:workers:<service i> (member: worker,
--          score: Redis ms at which its presence lapses)
-- ARGV[1]  worker
-- ARGV[2]  'arrive' (present for ARGV[3] ms from now), 'renew' (the same, only
--          if already present), 'leave' (withdraw now) or 'count' (change nothing)
-- ARGV[3]  ttl ms (for 'arrive' and 'renew')
-- Returns: the live presences on each service afterwards, in KEYS order.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local what = ARGV[2]
local counts = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  if what == 'arrive' then
    redis.call('ZADD', key, now_ms + tonumber(ARGV[3]), ARGV[1])
  elseif what == 'renew' then
    redis.call('ZADD', key, 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
  elseif what == 'leave' then
    redis.call('ZREM', key, ARGV[1])
  end
  if what ~= 'count' then
    -- Workers that died without leaving: their presence has lapsed.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then
      -- The set goes when its last presence lapses, so a deleted service costs nothing.
      redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2])))
    end
  end
  counts[i] = redis.call('ZCOUNT', key, '(' .. now_ms, '+inf')
end
return counts
