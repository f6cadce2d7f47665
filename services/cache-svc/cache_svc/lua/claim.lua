-- Claims dirty rows of one shard for a flush, up to a batch of each entity: when a whole
-- batch is ready in the shard, or when its oldest ready row has waited the delay
-- (ARGV[2]). KEYS are each entity's due and pending sets, ARGV[7...] the entities' names.
-- Claimed rows are leased: if no worker acknowledges them before the lease ends, they are
-- claimed again. Each keeps the claim id (ARGV[6]) and the version claimed in `_claim`,
-- which its task carries. Returns the shard's pending rows, its ready rows, then each
-- entity with claimed rows followed by their ids and hashes.
local shard_prefix, delay, batch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local channel, claim = ARGV[5], ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pending_rows, ready, oldest = 0, 0, now
for k = 1, #KEYS, 2 do
  pending_rows = pending_rows + redis.call('ZCARD', KEYS[k + 1])
  local entity_ready = redis.call('ZCOUNT', KEYS[k], '-inf', now)
  if entity_ready > 0 then
    ready = ready + entity_ready
    oldest = math.min(oldest, tonumber(redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')[2]))
  end
end
local out = {pending_rows, ready}
if ready == 0 or (ready < batch and oldest > now - delay) then return out end
for k = 1, #KEYS, 2 do
  local due, pending, entity = KEYS[k], KEYS[k + 1], ARGV[6 + (k + 1) / 2]
  local prefix, rows, gone = shard_prefix .. entity .. ':', {}, {}
  for _, id in ipairs(redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)) do
    local key = prefix .. id
    local row = redis.call('HGETALL', key)
    if #row == 0 then
      -- The row is gone (Redis lost its data): nothing is left to write.
      redis.call('ZREM', due, id)
      redis.call('ZREM', pending, id)
      gone[#gone + 1] = '[' .. id .. ']'
    else
      redis.call('ZADD', due, 'XX', now + lease, id)
      redis.call('HDEL', key, '_since', '_writes', '_links')
      redis.call('HSET', key, '_claim', claim .. ':' .. redis.call('HGET', key, '_ver'))
      rows[#rows + 1] = id
      rows[#rows + 1] = row
    end
  end
  publish(channel, entity, 'd', string.format('%d', now), gone)
  if #rows > 0 then
    out[#out + 1] = entity
    out[#out + 1] = rows
  end
end
return out
