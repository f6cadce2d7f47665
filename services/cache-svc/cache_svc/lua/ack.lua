-- Marks flushed rows clean: only rows in flight under the claim named (ARGV[5]), that is,
-- whose `_claim` holds that claim id and the flushed version, and that are still dirty.
-- An acknowledgement of no claim, another claim or another version changes nothing, so no
-- caller can make a write clean that no flush made durable. A row written since its claim
-- stays dirty, pending since its first write after the claim. Each row so confirmed has
-- its `_claim` cleared and counts once as flushed. A row claimed before claims were kept
-- has no `_claim`: no acknowledgement matches it, and it is claimed again when its lease
-- ends (the writes are idempotent). Returns the number cleaned, the accept-to-durable lag
-- in ms of each, how many were confirmed, and the ids of clean rows cached at an older
-- version than acknowledged, which the caller checks against Postgres (drop_outdated.lua).
local due, pending, stats = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl, channel, entity, claim = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cleaned, confirmed, lags, clean, outdated, removed = 0, 0, {}, {}, {}, {}
local ids = {}
for i = 6, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local since = batched('ZMSCORE', pending, ids)
for n = 1, #ids do
  local id, flushed_arg = ids[n], ARGV[5 + 2 * n]
  local flushed, key = tonumber(flushed_arg), prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty', '_claim', '_since')
  local current = tonumber(meta[1])
  if meta[2] and meta[3] == claim .. ':' .. flushed_arg then
    confirmed = confirmed + 1
    if current == flushed then
      if since[n] then lags[#lags + 1] = now - tonumber(since[n]) end
      redis.call('HDEL', key, '_dirty', '_since', '_claim')
      redis.call('EXPIRE', key, ttl)
      removed[#removed + 1] = id
      cleaned = cleaned + 1
      clean[#clean + 1] = '[' .. id .. ',' .. flushed_arg .. ']'
    else
      redis.call('HDEL', key, '_claim')
      if meta[4] then redis.call('ZADD', pending, 'XX', meta[4], id) end
    end
  elseif current and not meta[2] and current < flushed then
    outdated[#outdated + 1] = id
  end
end
batched('ZREM', due, removed)
batched('ZREM', pending, removed)
publish(channel, entity, 'c', string.format('%d', now), clean)
if confirmed > 0 then redis.call('HINCRBY', stats, 'flushed', confirmed) end
return {cleaned, lags, confirmed, outdated}
