-- Each service's queue depth and parked jobs, counted where they are kept: one
-- command for a scrape, however many services (a LLEN per priority list and a
-- ZCARD each, sent one by one, cost the scraper more than Redis).
-- KEYS     for each service, its priority lists and then its parked set
-- ARGV[1]  how many keys each service has (its lists, then one)
-- Returns: depth, parked, for each service in KEYS order.
local per = tonumber(ARGV[1])
local found = {}
for first = 1, #KEYS, per do
  local depth = 0
  for i = first, first + per - 2 do
    depth = depth + redis.call('LLEN', KEYS[i])
  end
  found[#found + 1] = depth
  found[#found + 1] = redis.call('ZCARD', KEYS[first + per - 1])
end
return found
