-- Takes the fill token ARGV[2] for the rows ARGV[4...] under the prefix ARGV[1], for
-- ARGV[3] ms: one call per chunk, not a command and a reply per row.
-- KEYS[1], a key of the shard, only routes the call to the node holding it on a Redis Cluster.
local prefix, token, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do redis.call('SET', prefix .. ARGV[i], token, 'PX', ttl_ms) end
return #ARGV - 3
