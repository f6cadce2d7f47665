-- Applies updates to cached rows, each given as id, base, column count, pairs. A row
-- that is not cached gives -1 (the caller loads it and tries again), unless its base
-- is 0 or more: the version Postgres holds, read by the caller, and the row is then
-- created as a partial row. A row that would take the pending rows beyond ARGV[2] gives
-- -2 and is not applied: those of every entity of this shard (KEYS[6...]), counted here,
-- and those of the other shards, ARGV[6], as the caller last saw them. The last element
-- of the reply is this shard's pending rows. A retired shard (KEYS[5]) refuses the
-- call with a RETIRED error. ARGV[7] is empty, or, while tracing is on, the characters of
-- span contexts a row keeps in `_links`: then each update carries one more argument after
-- its base, the context of the span that accepted it (empty when not sampled), appended
-- to the row's `_links`, of which the last ARGV[7] characters are kept. With ARGV[5] = 1 each
-- version is followed by the whole row as it is now (empty where not applied), and the
-- published change carries each whole row's values (kind "v"), so near caches holding
-- the row can take the new value instead of dropping it. The version is a hybrid clock:
-- above the previous version (or the base) and at least the Redis server's time in
-- microseconds, so versions keep growing even after Redis lost its data and rows were
-- reloaded from Postgres.
local due, pending, stats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.error_reply('RETIRED this shard layout was replaced; restart with the current WRITEBACK_SHARDS')
end
local prefix, max_pending = ARGV[1], tonumber(ARGV[2])
local channel, entity, reply = ARGV[3], ARGV[4], ARGV[5] == '1'
local changed, valued, NULL = {}, {}, '\0'
local shard_pending = 0
for k = 6, #KEYS do shard_pending = shard_pending + redis.call('ZCARD', KEYS[k]) end
local total_pending = shard_pending + tonumber(ARGV[6])
local links_kept = tonumber(ARGV[7])
-- Arguments of an update before its column pairs: id, base, [link,] column count.
local head = links_kept and 4 or 3
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = string.format('%d', math.floor(now_us / 1000))
local out, due_args, pending_args, i = {}, {'ZADD', due, 'LT'}, {'ZADD', pending}, 8
while i <= #ARGV do
  local id, base, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + head - 1])
  local key = prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty', '_dead', '_writes', '_since', '_partial')
  -- A dirty row is pending unless it was dead-lettered.
  local already_pending = meta[2] and not meta[3]
  local partial = meta[6] or (not meta[1] and base >= 0)
  if not meta[1] and base < 0 then
    out[#out + 1] = -1
    if reply then out[#out + 1] = {} end
  elseif not already_pending and total_pending >= max_pending then
    out[#out + 1] = -2
    if reply then out[#out + 1] = {} end
  else
    local version = string.format('%d', math.max(tonumber(meta[1] or base) + 1, now_us))
    local command = {'HSET', key, '_ver', version, '_dirty', '1',
                     '_writes', (tonumber(meta[4]) or 0) + 1, '_since', meta[5] or now_ms}
    if partial then
      command[#command + 1] = '_partial'
      command[#command + 1] = '1'
    end
    if links_kept and ARGV[i + 2] ~= '' then
      local links = (redis.call('HGET', key, '_links') or '') .. ARGV[i + 2]
      command[#command + 1] = '_links'
      command[#command + 1] = string.sub(links, -links_kept)
    end
    for j = i + head, i + head - 2 + 2 * n, 2 do
      -- NULL arrives as NUL, which no stored value can be. A whole row leaves a NULL
      -- column out; a partial one keeps the NUL, since there absent means unknown.
      if ARGV[j + 1] == NULL and not partial then
        redis.call('HDEL', key, ARGV[j])
      else
        command[#command + 1] = ARGV[j]
        command[#command + 1] = ARGV[j + 1]
      end
    end
    redis.call(unpack(command))
    if meta[3] then
      -- A newer write supersedes a dead-lettered one and is tried afresh.
      redis.call('HDEL', key, '_dead')
      redis.call('HDEL', dead, id)
    end
    -- A clean row loses its TTL; a row created here has none.
    if meta[1] and not meta[2] then redis.call('PERSIST', key) end
    due_args[#due_args + 1] = now_ms
    due_args[#due_args + 1] = id
    if not already_pending then
      pending_args[#pending_args + 1] = now_ms
      pending_args[#pending_args + 1] = id
      total_pending = total_pending + 1
      shard_pending = shard_pending + 1
    end
    out[#out + 1] = tonumber(version)
    local change = '[' .. id .. ',' .. version
    if reply then
      local row = redis.call('HGETALL', key)
      out[#out + 1] = row
      if not partial then
        local values = {}
        for j = 1, #row, 2 do
          if string.sub(row[j], 1, 1) ~= '_' then values[row[j]] = row[j + 1] end
        end
        valued[#valued + 1] = change .. ',' .. cjson.encode(values) .. ']'
        change = nil
      end
    end
    if change then changed[#changed + 1] = change .. ']' end
  end
  i = i + head + 2 * n
end
publish(channel, entity, 'w', now_ms, changed)
publish(channel, entity, 'v', now_ms, valued)
if #due_args > 3 then
  redis.call(unpack(due_args))
  redis.call('HINCRBY', stats, 'accepted', (#due_args - 3) / 2)
end
if #pending_args > 2 then redis.call(unpack(pending_args)) end
out[#out + 1] = shard_pending
return out
