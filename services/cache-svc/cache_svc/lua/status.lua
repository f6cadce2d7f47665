-- One shard's pending rows: KEYS are each entity's pending set, then each entity's dead
-- letters. Returns each entity's pending rows and the accept time of its oldest pending
-- write (nil if none), then the shard's dead letters.
local entities, out, dead = #KEYS / 2, {}, 0
for k = 1, entities do
  out[#out + 1] = redis.call('ZCARD', KEYS[k])
  out[#out + 1] = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')[2] or false
end
for k = entities + 1, #KEYS do dead = dead + redis.call('HLEN', KEYS[k]) end
out[#out + 1] = dead
return out
