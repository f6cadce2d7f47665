-- What the cache knows of one row (KEYS: its hash, then its shard's due and pending sets
-- and dead letters of the entity; ARGV[1] its id), read in one atomic step: Redis' time
-- in ms, the hash, the row's due score, its pending score, its dead letter and its TTL in
-- ms. Reads only.
local row, id = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return {now_ms, redis.call('HGETALL', row), redis.call('ZSCORE', KEYS[2], id) or false,
        redis.call('ZSCORE', KEYS[3], id) or false, redis.call('HGET', KEYS[4], id) or false,
        redis.call('PTTL', row)}
