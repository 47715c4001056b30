-- Each service's queue depth and parked jobs, counted where they are kept: one
-- command for a scrape, however many services (a LLEN per priority list and a
-- ZCARD each, sent one by one, cost the scraper more than Redis).
-- KEYS[i]  for each service in turn, its priority lists and then its parked set
-- ARGV[1]  how many keys each service has (its lists, then one)
-- Returns: depth, parked, for each service in KEYS order.
local per = tonumber(ARGV[1])
local found = {}
local depth = 0
for i = 1, #KEYS do
  if i % per == 0 then
    found[#found + 1] = depth
    found[#found + 1] = redis.call('ZCARD', KEYS[i])
    depth = 0
  else
    depth = depth + redis.call('LLEN', KEYS[i])
  end
end
return found
