-- The ids (ARGV[2...]) whose row is not cached under the prefix ARGV[1]: checked in
-- Redis, so a bulk of cached rows costs one small reply per chunk, not one per row.
-- KEYS[1], a key of the shard, only routes the call to the node holding it on a Redis Cluster.
local prefix, out = ARGV[1], {}
for i = 2, #ARGV do
  if redis.call('EXISTS', prefix .. ARGV[i]) == 0 then out[#out + 1] = ARGV[i] end
end
return out
