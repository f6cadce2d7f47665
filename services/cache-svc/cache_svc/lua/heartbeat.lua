-- A watermark of the shards ARGV[3...] (of ARGV[2] in all) on the changes channel ARGV[1]:
-- {"k":"h","s":[shards],"n":shards in all,"u":Redis time in µs}. KEYS[1], a key of the first
-- shard, only routes the call to the node holding them on a Redis Cluster. A row's version is
-- at least the Redis time of its write, so every change of those shards' rows at a version
-- below "u" was published by this node before it (near_cache.NearCache.applied_through).
local t = redis.call('TIME')
local now_us = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('PUBLISH', ARGV[1], '{"k":"h","s":[' .. table.concat(ARGV, ',', 3) .. '],"n":' .. ARGV[2] ..
           ',"u":' .. now_us .. '}')
return now_us
