-- Completes partial rows with the columns Postgres holds (ARGV[2...]: id, column count,
-- pairs; NULL columns left out): a column written since stays. Returns each row as it is.
-- KEYS[1], a key of the shard, only routes the call to the node holding it on a Redis Cluster.
local prefix, out, i = ARGV[1], {}, 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  if redis.call('HEXISTS', key, '_partial') == 1 then
    for j = i + 2, i + 1 + 2 * n, 2 do redis.call('HSETNX', key, ARGV[j], ARGV[j + 1]) end
    redis.call('HDEL', key, '_partial')
  end
  out[#out + 1] = redis.call('HGETALL', key)
  i = i + 2 + 2 * n
end
return out
