-- Drops clean rows cached at an older version than the one Postgres holds (ARGV[4...]: id
-- and Postgres' version): a read reloads them. An acknowledgement reports such rows (after
-- Redis lost data, a row reloaded before an earlier flush landed), Postgres confirms them.
-- Returns how many were dropped.
-- KEYS[1], a key of the shard, only routes the call to the node holding it on a Redis Cluster.
local prefix, channel, entity, dropped = ARGV[1], ARGV[2], ARGV[3], {}
for i = 4, #ARGV, 2 do
  local key = prefix .. ARGV[i]
  local meta = redis.call('HMGET', key, '_ver', '_dirty')
  if meta[1] and not meta[2] and tonumber(meta[1]) < tonumber(ARGV[i + 1]) then
    redis.call('DEL', key)
    dropped[#dropped + 1] = '[' .. ARGV[i] .. ']'
  end
end
local t = redis.call('TIME')
publish(channel, entity, 'd', string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), dropped)
return #dropped
