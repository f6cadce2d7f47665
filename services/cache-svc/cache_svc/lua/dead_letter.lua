-- Takes rows out of the flush schedule when Postgres kept refusing their version: only
-- rows in flight under the claim named (ARGV[4]) at that version, as in ack.lua. A row written
-- again since keeps flowing, and a clean one (nothing of it was pending) is left alone.
-- Returns how many were dead-lettered.
local due, pending, dead, prefix, channel, entity = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local claim = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count, changed = 0, {}
for i = 5, #ARGV, 3 do
  local id, version, error = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty', '_claim')
  if meta[1] == version and meta[2] and meta[3] == claim .. ':' .. version then
    redis.call('HSET', key, '_dead', '1')
    redis.call('HDEL', key, '_claim')
    redis.call('HSET', dead, id, cjson.encode({version = version, error = error, failed_at = now}))
    redis.call('ZREM', due, id)
    redis.call('ZREM', pending, id)
    count = count + 1
    changed[#changed + 1] = '[' .. id .. ',' .. version .. ']'
  end
end
publish(channel, entity, 'x', string.format('%d', now), changed)
return count
