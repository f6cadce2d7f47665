-- Claims dirty rows of one shard for a flush, up to a batch of each entity: when a whole
-- batch is ready in the shard, or when its oldest ready row has waited the delay
-- (ARGV[2]). KEYS are each entity's due and pending sets; ARGV[7...] describe the entities
-- in the same order, each as its name and its columns, `<column>:i` for an integer and
-- `<column>:s` for a string column, separated by spaces ("album title:s artist_id:i").
-- Claimed rows are leased: if no worker acknowledges them before the lease ends, they are
-- claimed again. Each keeps the claim id (ARGV[6]) and the version claimed in `_claim`,
-- which its task carries. Returns the shard's pending rows, its ready rows, then for each
-- entity with claimed rows: its name, the rows as the columnar JSON a task carries
-- (chinook.entities.Entity.columns_json's form, built here so that no process on the way
-- to Postgres reads a row apart), how many rows, how many accepted writes they cover, and
-- the span contexts each row kept (`_links`, one string per row; empty when none has any).
local shard_prefix, delay, batch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local channel, claim = ARGV[5], ARGV[6]
local NULL = '\0'
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

-- A stored value as a JSON value: an integer column's digits as they are, anything else
-- (a string, or what no integer column should hold) as a JSON string.
local function json_value(value, integer)
  if integer and string.match(value, '^%-?%d+$') then return value end
  return cjson.encode(value)
end

local leased = string.format('%d', now + lease)
for k = 1, #KEYS, 2 do
  local due, pending = KEYS[k], KEYS[k + 1]
  local entity, columns, integer = nil, {}, {}
  for word in string.gmatch(ARGV[6 + (k + 1) / 2], '%S+') do
    if entity == nil then
      entity = word
    else
      local name, kind = string.match(word, '^(.+):(%a)$')
      columns[#columns + 1] = name
      integer[#columns] = kind == 'i'
    end
  end
  local prefix, gone = shard_prefix .. entity .. ':', {}
  local ids, versions, values, unset, links = {}, {}, {}, {}, {}
  for c = 1, #columns do values[c] = {} end
  local any_unset, any_links, writes, lease_args = false, false, 0, {'ZADD', due, 'XX'}
  local fields = {'HMGET', '', '_ver', '_partial', '_writes', '_links'}
  for c = 1, #columns do fields[#fields + 1] = columns[c] end
  for _, id in ipairs(redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)) do
    local key = prefix .. id
    fields[2] = key
    local row = redis.call(unpack(fields))
    if not row[1] then
      -- The row is gone (Redis lost its data): nothing is left to write.
      redis.call('ZREM', due, id)
      redis.call('ZREM', pending, id)
      gone[#gone + 1] = '[' .. id .. ']'
    else
      lease_args[#lease_args + 1] = leased
      lease_args[#lease_args + 1] = id
      if #lease_args >= 2003 then
        redis.call(unpack(lease_args))
        lease_args = {'ZADD', due, 'XX'}
      end
      redis.call('HDEL', key, '_since', '_writes', '_links')
      redis.call('HSET', key, '_claim', claim .. ':' .. row[1])
      ids[#ids + 1] = id
      versions[#versions + 1] = row[1]
      writes = writes + (tonumber(row[3]) or 1)
      links[#links + 1] = row[4] or ''
      any_links = any_links or row[4] ~= false
      -- A whole row leaves a NULL column out; a partial row holds NUL for one, and lacks
      -- the columns it does not write, which its task lists as unset.
      local row_unset = {}
      for c = 1, #columns do
        local value = row[4 + c]
        if not value then
          values[c][#ids] = 'null'
          if row[2] then row_unset[#row_unset + 1] = '"' .. columns[c] .. '"' end
        elseif value == NULL then
          values[c][#ids] = 'null'
        else
          values[c][#ids] = json_value(value, integer[c])
        end
      end
      unset[#ids] = '[' .. table.concat(row_unset, ',') .. ']'
      any_unset = any_unset or #row_unset > 0
    end
  end
  if #lease_args > 3 then redis.call(unpack(lease_args)) end
  publish(channel, entity, 'd', string.format('%d', now), gone)
  if #ids > 0 then
    local parts = {'{"id":[' .. table.concat(ids, ',') .. '],"version":[' .. table.concat(versions, ',') .. ']'}
    for c = 1, #columns do
      parts[#parts + 1] = '"' .. columns[c] .. '":[' .. table.concat(values[c], ',') .. ']'
    end
    if any_unset then parts[#parts + 1] = '"unset":[' .. table.concat(unset, ',') .. ']' end
    out[#out + 1] = entity
    out[#out + 1] = table.concat(parts, ',') .. '}'
    out[#out + 1] = #ids
    out[#out + 1] = writes
    out[#out + 1] = any_links and links or {}
  end
end
return out
