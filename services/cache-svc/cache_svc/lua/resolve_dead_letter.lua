-- Ends a dead letter: ARGV[2] 'retry' schedules the write again, 'discard' drops the
-- cached row so reads go back to Postgres. Returns the entry, or nil if there is none.
local due, pending, dead, prefix, id, action = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local channel, entity = ARGV[4], ARGV[5]
local entry = redis.call('HGET', dead, id)
if not entry then return nil end
redis.call('HDEL', dead, id)
local key = prefix .. id
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if action == 'retry' then
  redis.call('HDEL', key, '_dead')
  redis.call('ZADD', due, 0, id)
  redis.call('ZADD', pending, 'NX', tonumber(t[1]) * 1000, id)
  local version = redis.call('HGET', key, '_ver')
  if version then publish(channel, entity, 'p', now_ms, {'[' .. id .. ',' .. version .. ']'}) end
else
  redis.call('DEL', key)
  redis.call('ZREM', due, id)
  redis.call('ZREM', pending, id)
  publish(channel, entity, 'd', now_ms, {'[' .. id .. ']'})
end
return entry
