-- Bring the state stream back to Redis's clock: every entry whose id is ahead
-- of it is dead-lettered, deleted and appended again with an id Redis gives
-- now; the stream's last id and the mirrors' group are set back, so that new
-- entries are stamped now and delivered again. One script, so that nothing a
-- worker appends meanwhile can fall between the steps.
-- KEYS[1]  state stream topchef:state
-- KEYS[2]  dead-letter stream topchef:state:dead
-- KEYS[3]  dead-letter counts by reason topchef:state:dead:reasons
-- KEYS[4]  where a value of another type found at KEYS[1] is moved topchef:state:clobbered
-- ARGV[1]  the mirrors' consumer group
-- ARGV[2]  how far ahead of Redis's clock an id may be (ms)
-- ARGV[3]  how many dead letters the dead-letter stream keeps (approximately)
-- Returns: {rewound, id...}: 1 if the stream's last id or the group's was set
--   back, else 0; then the ids of the entries that were ahead. {2}: a value of
--   another type was at KEYS[1], and was moved aside.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  -- Written over (SET, HSET...): every append would fail. Moved aside, the
  -- next append makes the stream again, and the mirror its group.
  redis.call('RENAME', KEYS[1], KEYS[4])
  return {2}
end
if kind == 'none' then
  return {0}
end
local group, bound, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3]

-- Whether id a comes after id b: ids are 'ms-seq', two 64-bit decimals,
-- beyond what a Lua number holds exactly, so they are compared as text.
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am > #bm end
  if am ~= bm then return am > bm end
  if #as ~= #bs then return #as > #bs end
  return as > bs
end

-- A flat reply (XINFO's) as a table of its pairs.
local function pairs_of(reply)
  local found = {}
  for i = 1, #reply, 2 do
    found[reply[i]] = reply[i + 1]
  end
  return found
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now = string.format('%.0f-0', now_ms)
local first_ahead = string.format('%.0f-0', now_ms + bound + 1)
local limit = string.format('%.0f-18446744073709551615', now_ms + bound)

local ahead = redis.call('XRANGE', KEYS[1], first_ahead, '+')
for _, entry in ipairs(ahead) do
  redis.call('XACK', KEYS[1], group, entry[1])
  redis.call('XDEL', KEYS[1], entry[1])
end

local rewound = 0
local last = pairs_of(redis.call('XINFO', 'STREAM', KEYS[1]))['last-generated-id']
if after(last, limit) then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  local back = now
  if top and after(top[1], now) then
    back = top[1]
  end
  redis.call('XSETID', KEYS[1], back)
  rewound = 1
end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = pairs_of(info)
  if fields['name'] == group and after(fields['last-delivered-id'], limit) then
    -- Which entries the group was given is unknown once its id was moved,
    -- so everything still in the stream is delivered again: the mirror
    -- deletes what it applied, and applying an entry twice changes nothing.
    redis.call('XGROUP', 'SETID', KEYS[1], group, '0-0')
    rewound = 1
  end
end

-- A worker's entry has a few fields; one with more was written by hand, and
-- is not appended again (nor copied whole: unpack takes a few thousand values).
local most = 32
for _, entry in ipairs(ahead) do
  local fields = entry[2]
  local note = 'its id ' .. entry[1] .. ' was ahead of Redis\'s clock (' .. now .. '); '
  if #fields <= most then
    local id = redis.call('XADD', KEYS[1], '*', 'restamped', entry[1], unpack(fields))
    note = note .. 'appended again as ' .. id
  else
    note = note .. 'not appended again: ' .. (#fields / 2) .. ' fields'
  end
  local dead = {}
  for i = 1, math.min(#fields, most) do
    dead[i] = fields[i]
  end
  table.insert(dead, 'reason')
  table.insert(dead, 'future')
  table.insert(dead, 'error')
  table.insert(dead, note)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, '*', unpack(dead))
  redis.call('HINCRBY', KEYS[3], 'future', 1)
end
local answer = {rewound}
for _, entry in ipairs(ahead) do
  table.insert(answer, entry[1])
end
return answer
