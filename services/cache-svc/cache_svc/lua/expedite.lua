-- Makes every waiting dirty row claimable now; rows already claimed keep their lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', 0, id) end
return #ids
