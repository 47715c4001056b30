-- Shared by the scripts that start, end or give back a run: a service's slots
-- (its max_running, or a hold) and its parked jobs. Prepended to each script
-- that uses it (see claims.py), so that freeing a slot and releasing the job
-- it lets start are one piece, the same in every script that ends a run.
-- A service's keys, which each such script takes after its own:
--   running  set of the claim keys of the service's jobs running now
--   parked   sorted set of the claim keys of its parked jobs, by (priority, arrival)
--   control  hash written from SQL by producers and beat: 'held' (present while
--            held), 'max_running' (absent: no limit)
-- Returns: nothing; it defines the functions below for the script that follows it.

-- How many more of the service's jobs may start now: 0 while held, -1 for no limit.
local function free_slots(running, control)
  if redis.call('HEXISTS', control, 'held') == 1 then
    return 0
  end
  local most = tonumber(redis.call('HGET', control, 'max_running') or '0')
  if most <= 0 then
    return -1
  end
  return math.max(0, most - redis.call('SCARD', running))
end

-- Send up to n (-1: all) parked jobs back to their queue's lists, the oldest of
-- the highest priority first, to the end a worker's BRPOP takes first.
-- Returns how many went.
--
-- The order of the pushes matters as much as where they land. A worker
-- waiting in BRPOP on every priority list of its queue is not served from the
-- first list it names: once a script has pushed onto several lists, Redis
-- serves a client that waits on more than one of them from the list that
-- received the script's first push. So the lists are pushed highest priority
-- first (the parked set's order), and within each list the youngest job goes
-- first, so that its oldest ends nearest the consumers.
local function release_parked(parked, n)
  if n == 0 then
    return 0
  end
  local members = redis.call('ZRANGE', parked, 0, n < 0 and -1 or n - 1)
  -- Runs of the members still parked that go to one list (one priority), in
  -- the set's order: each run is the list and its members' positions.
  local runs = {}
  for i, claim in ipairs(members) do
    if redis.call('HEXISTS', claim, 'parked') == 1 then
      local to = redis.call('HGET', claim, 'parked_to')
      local last = runs[#runs]
      if to and last and last.to == to then
        last[#last + 1] = i
      elseif to then
        runs[#runs + 1] = {to = to, i}
      end
    end
  end
  for _, run in ipairs(runs) do
    for k = #run, 1, -1 do
      local message = redis.call('HGET', members[run[k]], 'parked_message')
      if message then
        redis.call('RPUSH', run.to, message)
      end
    end
  end
  for _, claim in ipairs(members) do
    redis.call('HDEL', claim, 'parked', 'parked_message')
  end
  if #members > 0 then
    redis.call('ZREMRANGEBYRANK', parked, 0, #members - 1)
  end
  return #members
end

-- The run of the job whose claim is `claim` ended (or was given back): free its
-- slot, and let the parked jobs that now may start go.
local function free_slot(running, parked, control, claim)
  if redis.call('SREM', running, claim) == 1 then
    release_parked(parked, free_slots(running, control))
  end
end
