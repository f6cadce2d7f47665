-- Caches rows loaded from Postgres, if the loader's fill token (ARGV[3]) is still the
-- current one for the row and the row is not cached yet. With ARGV[4] = 1, returns
-- each row as cached (empty where it was not cached). The version is the last pair.
-- KEYS[1], a key of the shard, only routes the call to the node holding it on a Redis Cluster.
local prefix, ttl, token, reply = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local fill_prefix, channel, entity = ARGV[5], ARGV[6], ARGV[7]
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out, changed, i = {}, {}, 8
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key, fill_key = prefix .. id, fill_prefix .. id
  if redis.call('GET', fill_key) == token then
    redis.call('DEL', fill_key)
    if redis.call('EXISTS', key) == 0 then
      local command = {'HSET', key}
      for j = i + 2, i + 1 + 2 * n do command[#command + 1] = ARGV[j] end
      redis.call(unpack(command))
      redis.call('EXPIRE', key, ttl)
      changed[#changed + 1] = '[' .. id .. ',' .. ARGV[i + 1 + 2 * n] .. ']'
    end
  end
  if reply then out[#out + 1] = redis.call('HGETALL', key) end
  i = i + 2 + 2 * n
end
publish(channel, entity, 'f', now_ms, changed)
return out
