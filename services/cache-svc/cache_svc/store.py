"""Rows, versions and the write-back bookkeeping in Redis.

Pending writes are split into WRITEBACK_SHARDS shards: a row belongs to shard
`id mod shards`, and every key of a shard carries the same hash tag, so each Lua script
touches one hash slot and the same scripts run on one Redis and on a Redis Cluster.
Layout, with `p` the configured key prefix and `s` a shard's prefix,
`p{shard/shards}:` (for example `chinook:{7/16}:`):
- `s{entity}:{id}`, a hash: the row's columns, `_ver` (its version), `_dirty` (set
  while Postgres lags behind) and `_since` (when the oldest write not yet claimed by
  a flush was accepted). Clean rows carry the TTL; dirty rows have none, so a
  `volatile-*` maxmemory policy never evicts them. A NULL column is absent, except in a
  partial row.
- A partial row (`_partial` set) is one a bulk update accepted without reading it from
  Postgres first: it holds only the columns written since (a NULL one as NUL), and a flush
  writes only those. A read completes it from Postgres first (MERGE).
- `s wb:due:{entity}`, a sorted set: the shard's dirty rows and when each may next be
  claimed for a flush (its first pending accept time, or the end of its lease once
  claimed). These sets, not the queue, are the record of pending writes.
- `s wb:pending:{entity}`, a sorted set: the dirty rows and the accept time of the
  oldest write of each that is not yet durable.
- `s wb:dead:{entity}`, a hash: the dead letters, rows whose write Postgres kept
  refusing, with the version and the error. They stay dirty but are not scheduled.
- `s fill:{entity}:{id}`: a token set before a cache miss is loaded from Postgres. Only
  the loader holding the current token may cache what it read, so a slow load can
  never cache a value older than one written and flushed meanwhile.
- `_claim` in a claimed row's hash: `<claim id>:<version>`, the random id of the flush
  round that took it and the version it took; only an acknowledgement naming both changes
  the row (see ACK).
- `_links` in a dirty row's hash, only while tracing is on: the span contexts of its
  latest accepted writes since it was last claimed (chinook.tracing.LINKS_PER_ROW of
  them, LINK_WIDTH characters each), which its flush links back to.
- `s wb:stats`, a hash of counters; the shards' counters add up.
- `s wb:retired`: set while, and once, the shard's layout is replaced by another number
  of shards (see adopt_layout); a write into a retired shard is refused.
- `p wb:layout`: the number of shards the rows are laid out in.
- `p changes`, a pub/sub channel: each script that changes cached rows publishes what
  it changed (see CacheService.WatchChanges), in the same atomic step, so subscribers
  see changes in the order Redis applied them; HEARTBEAT adds each shard's watermarks.

Each step that changes a row and its bookkeeping is one Lua script, so it is atomic. The
scripts run as the functions of one Redis Functions library (functions.py).
"""

import json
import secrets
import time
from dataclasses import dataclass

import redis

from chinook.entities import new_claim_id
from chinook.tracing import LINK_WIDTH, LINKS_PER_ROW

from .functions import NOT_FOUND, Library, ensure_loaded

META_PREFIX = "_"

# Prepended to every script that changes rows: publishes one message per call, listing
# the rows it changed as '[id,version]' (or '[id]' for a dropped row) strings.
PUBLISH = """
local function publish(channel, entity, kind, now_ms, rows)
  if #rows > 0 then
    redis.call('PUBLISH', channel, '{"e":"' .. entity .. '","k":"' .. kind .. '","t":' .. now_ms ..
                ',"r":[' .. table.concat(rows, ',') .. ']}')
  end
end
"""

# Applies updates to cached rows, each given as id, base, column count, pairs. A row
# that is not cached gives -1 (the caller loads it and tries again), unless its base
# is 0 or more: the version Postgres holds, read by the caller, and the row is then
# created as a partial row. A row that would take the pending rows beyond ARGV[2] gives
# -2 and is not applied: those of every entity of this shard (KEYS[6...]), counted here,
# and those of the other shards, ARGV[6], as the caller last saw them. The last element
# of the reply is this shard's pending rows. A retired shard (KEYS[5]) refuses the
# call with a RETIRED error. ARGV[7] is empty, or, while tracing is on, the characters of
# span contexts a row keeps in `_links`: then each update carries one more argument after
# its base, the context of the span that accepted it (empty when not sampled), appended
# to the row's `_links`, of which the last ARGV[7] characters are kept. With ARGV[5] = 1 each
# version is followed by the whole row as it is now (empty where not applied), and the
# published change carries each whole row's values (kind "v"), so near caches holding
# the row can take the new value instead of dropping it. The
# version is a hybrid clock: above the previous version (or the base) and at least the
# Redis server's time in microseconds, so versions keep growing even after Redis lost
# its data and rows were reloaded from Postgres.
ACCEPT = PUBLISH + """
local due, pending, stats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.error_reply('RETIRED this shard layout was replaced; restart with the current WRITEBACK_SHARDS')
end
local prefix, max_pending = ARGV[1], tonumber(ARGV[2])
local channel, entity, reply = ARGV[3], ARGV[4], ARGV[5] == '1'
local changed, valued, NULL = {}, {}, '\\0'
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
    local version = math.max(tonumber(meta[1] or base) + 1, now_us)
    local command = {'HSET', key, '_ver', string.format('%d', version), '_dirty', '1',
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
    if not meta[2] then redis.call('PERSIST', key) end
    due_args[#due_args + 1] = now_ms
    due_args[#due_args + 1] = id
    if not already_pending then
      pending_args[#pending_args + 1] = now_ms
      pending_args[#pending_args + 1] = id
      total_pending = total_pending + 1
      shard_pending = shard_pending + 1
    end
    out[#out + 1] = version
    local change = '[' .. id .. ',' .. string.format('%d', version)
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
"""

# The scripts below that take no key of their own get one key of the shard as KEYS[1]:
# it routes the call to the node holding the shard on a Redis Cluster.

# Completes partial rows with the columns Postgres holds (ARGV[2...]: id, column count,
# pairs; NULL columns left out): a column written since stays. Returns each row as it is.
MERGE = """
local prefix, out, i = ARGV[1], {}, 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  if redis.call('HEXISTS', key, '_partial') == 1 then
    for j = i + 2, i + 1 + 2 * n, 2 do redis.call('HSETNX', key, ARGV[j], ARGV[j + 1]) end
    redis.call('HDEL', key, '_partial')
  end
  out[#out + 1] = redis.call('HGETALL', key)
  i = i + 2 + 2 * n
end
return out
"""

# Takes the fill token ARGV[2] for the rows ARGV[4...] under the prefix ARGV[1], for
# ARGV[3] ms: one call per chunk, not a command and a reply per row.
BEGIN_FILL = """
local prefix, token, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do redis.call('SET', prefix .. ARGV[i], token, 'PX', ttl_ms) end
return #ARGV - 3
"""

# Caches rows loaded from Postgres, if the loader's fill token (ARGV[3]) is still the
# current one for the row and the row is not cached yet. With ARGV[4] = 1, returns
# each row as cached (empty where it was not cached). The version is the last pair.
FILL = PUBLISH + """
local prefix, ttl, token, reply = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local fill_prefix, channel, entity = ARGV[5], ARGV[6], ARGV[7]
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out, changed, i = {}, {}, 8
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key, fill_key = prefix .. id, fill_prefix .. id
  if redis.call('GET', fill_key) == token then
    redis.call('DEL', fill_key)
    if redis.call('EXISTS', key) == 0 then
      local command = {'HSET', key}
      for j = i + 2, i + 1 + 2 * n do command[#command + 1] = ARGV[j] end
      redis.call(unpack(command))
      redis.call('EXPIRE', key, ttl)
      changed[#changed + 1] = '[' .. id .. ',' .. ARGV[i + 1 + 2 * n] .. ']'
    end
  end
  if reply then out[#out + 1] = redis.call('HGETALL', key) end
  i = i + 2 + 2 * n
end
publish(channel, entity, 'f', now_ms, changed)
return out
"""

# Claims dirty rows of one shard for a flush, up to a batch of each entity: when a whole
# batch is ready in the shard, or when its oldest ready row has waited the delay
# (ARGV[2]). KEYS are each entity's due and pending sets, ARGV[7...] the entities' names.
# Claimed rows are leased: if no worker acknowledges them before the lease ends, they are
# claimed again. Each keeps the claim id (ARGV[6]) and the version claimed in `_claim`,
# which its task carries. Returns the shard's pending rows, its ready rows, then each
# entity with claimed rows followed by their ids and hashes.
CLAIM = PUBLISH + """
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
"""

# Marks flushed rows clean: only rows in flight under the claim named (ARGV[5]), that is,
# whose `_claim` holds that claim id and the flushed version, and that are still dirty.
# An acknowledgement of no claim, another claim or another version changes nothing, so no
# caller can make a write clean that no flush made durable. A row written since its claim
# stays dirty, pending since its first write after the claim. Each row so confirmed has
# its `_claim` cleared and counts once as flushed. A row claimed before claims were kept
# has no `_claim`: no acknowledgement matches it, and it is claimed again when its lease
# ends (the writes are idempotent). Returns the number cleaned, the accept-to-durable lag
# in ms of each, how many were confirmed, and the ids of clean rows cached at an older
# version than acknowledged, which the caller checks against Postgres (DROP_OUTDATED).
ACK = PUBLISH + """
local due, pending, stats = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl, channel, entity, claim = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cleaned, confirmed, lags, clean, outdated = 0, 0, {}, {}, {}
for i = 6, #ARGV, 2 do
  local id, flushed = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty', '_claim', '_since')
  local current = tonumber(meta[1])
  if meta[2] and meta[3] == claim .. ':' .. ARGV[i + 1] then
    confirmed = confirmed + 1
    if current == flushed then
      local since = redis.call('ZSCORE', pending, id)
      if since then lags[#lags + 1] = now - tonumber(since) end
      redis.call('HDEL', key, '_dirty', '_since', '_claim')
      redis.call('EXPIRE', key, ttl)
      redis.call('ZREM', due, id)
      redis.call('ZREM', pending, id)
      cleaned = cleaned + 1
      clean[#clean + 1] = '[' .. id .. ',' .. ARGV[i + 1] .. ']'
    else
      redis.call('HDEL', key, '_claim')
      if meta[4] then redis.call('ZADD', pending, 'XX', meta[4], id) end
    end
  elseif current and not meta[2] and current < flushed then
    outdated[#outdated + 1] = id
  end
end
publish(channel, entity, 'c', string.format('%d', now), clean)
if confirmed > 0 then redis.call('HINCRBY', stats, 'flushed', confirmed) end
return {cleaned, lags, confirmed, outdated}
"""

# Drops clean rows cached at an older version than the one Postgres holds (ARGV[4...]: id
# and Postgres' version): a read reloads them. An acknowledgement reports such rows (after
# Redis lost data, a row reloaded before an earlier flush landed), Postgres confirms them.
# Returns how many were dropped.
DROP_OUTDATED = PUBLISH + """
local prefix, channel, entity, dropped = ARGV[1], ARGV[2], ARGV[3], {}
for i = 4, #ARGV, 2 do
  local key = prefix .. ARGV[i]
  local meta = redis.call('HMGET', key, '_ver', '_dirty')
  if meta[1] and not meta[2] and tonumber(meta[1]) < tonumber(ARGV[i + 1]) then
    redis.call('DEL', key)
    dropped[#dropped + 1] = '[' .. ARGV[i] .. ']'
  end
end
local t = redis.call('TIME')
publish(channel, entity, 'd', string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), dropped)
return #dropped
"""

# Makes every waiting dirty row claimable now; rows already claimed keep their lease.
EXPEDITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', 0, id) end
return #ids
"""

# Takes rows out of the flush schedule when Postgres kept refusing their version: only
# rows in flight under the claim named (ARGV[4]) at that version, as ACK. A row written
# again since keeps flowing, and a clean one (nothing of it was pending) is left alone.
# Returns how many were dead-lettered.
DEAD_LETTER = PUBLISH + """
local due, pending, dead, prefix, channel, entity = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local claim = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count, changed = 0, {}
for i = 5, #ARGV, 3 do
  local id, version, error = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty', '_claim')
  if meta[1] == version and meta[2] and meta[3] == claim .. ':' .. version then
    redis.call('HSET', key, '_dead', '1')
    redis.call('HDEL', key, '_claim')
    redis.call('HSET', dead, id, cjson.encode({version = version, error = error, failed_at = now}))
    redis.call('ZREM', due, id)
    redis.call('ZREM', pending, id)
    count = count + 1
    changed[#changed + 1] = '[' .. id .. ',' .. version .. ']'
  end
end
publish(channel, entity, 'x', string.format('%d', now), changed)
return count
"""

# Ends a dead letter: ARGV[2] 'retry' schedules the write again, 'discard' drops the
# cached row so reads go back to Postgres. Returns the entry, or nil if there is none.
RESOLVE_DEAD_LETTER = PUBLISH + """
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
"""

# One shard's pending rows: KEYS are each entity's pending set, then each entity's dead
# letters. Returns each entity's pending rows and the accept time of its oldest pending
# write (nil if none), then the shard's dead letters.
STATUS = """
local entities, out, dead = #KEYS / 2, {}, 0
for k = 1, entities do
  out[#out + 1] = redis.call('ZCARD', KEYS[k])
  out[#out + 1] = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')[2] or false
end
for k = entities + 1, #KEYS do dead = dead + redis.call('HLEN', KEYS[k]) end
out[#out + 1] = dead
return out
"""

# The ids (ARGV[2...]) whose row is not cached under the prefix ARGV[1]: checked in
# Redis, so a bulk of cached rows costs one small reply per chunk, not one per row.
UNCACHED = """
local prefix, out = ARGV[1], {}
for i = 2, #ARGV do
  if redis.call('EXISTS', prefix .. ARGV[i]) == 0 then out[#out + 1] = ARGV[i] end
end
return out
"""

# What the cache knows of one row (KEYS: its hash, then its shard's due and pending sets
# and dead letters of the entity; ARGV[1] its id), read in one atomic step: Redis' time
# in ms, the hash, the row's due score, its pending score, its dead letter and its TTL in
# ms. Reads only.
INSPECT = """
local row, id = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return {now_ms, redis.call('HGETALL', row), redis.call('ZSCORE', KEYS[2], id) or false,
        redis.call('ZSCORE', KEYS[3], id) or false, redis.call('HGET', KEYS[4], id) or false,
        redis.call('PTTL', row)}
"""

# A watermark of the shards ARGV[3...] (of ARGV[2] in all) on the changes channel ARGV[1]:
# {"k":"h","s":[shards],"n":shards in all,"u":Redis time in µs}. KEYS[1], a key of the first
# shard, only routes the call to the node holding them on a Redis Cluster. A row's version is
# at least the Redis time of its write, so every change of those shards' rows at a version
# below "u" was published by this node before it (near_cache.NearCache.applied_through).
HEARTBEAT = """
local t = redis.call('TIME')
local now_us = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('PUBLISH', ARGV[1], '{"k":"h","s":[' .. table.concat(ARGV, ',', 3) .. '],"n":' .. ARGV[2] ..
           ',"u":' .. now_us .. '}')
return now_us
"""

# Every script, by the name of its function in the Redis functions library (functions.py).
SCRIPTS = {"accept": ACCEPT, "begin_fill": BEGIN_FILL, "fill": FILL, "merge": MERGE, "uncached": UNCACHED,
           "claim": CLAIM, "ack": ACK, "drop_outdated": DROP_OUTDATED, "expedite": EXPEDITE,
           "dead_letter": DEAD_LETTER, "resolve_dead_letter": RESOLVE_DEAD_LETTER, "status": STATUS,
           "inspect": INSPECT, "heartbeat": HEARTBEAT}
LIBRARY = Library(SCRIPTS, read_only={"uncached", "status", "inspect"})

# Rows per script call: long enough to amortise the round trip, short enough not to
# stall other clients of Redis.
CHUNK = 1000
# A load from Postgres slower than this gives up caching what it read.
FILL_TOKEN_TTL_MS = 30_000
# Tries of a script call on a cluster whose slot map changes under it (a failover), with
# backoff between them: about 1.5 s in all.
CLUSTER_ATTEMPTS = 6


class Backpressure(Exception):
    """Too many rows are pending; the write was not accepted."""


class NotReplicated(Exception):
    """Fewer Redis replicas than WRITEBACK_MIN_REPLICAS confirmed a write in time: it is
    not reported accepted (it may still be applied; writing it again is harmless)."""


class LayoutError(Exception):
    """Rows are pending under another number of shards than WRITEBACK_SHARDS; the
    message says how to change it."""


class ShardRetired(Exception):
    """The shard layout this process writes in was replaced by another process' one."""


@dataclass(frozen=True)
class CachedRow:
    id: int
    fields: dict  # column name to string value, as stored; absent means NULL, unless partial
    version: int
    dirty: bool = False
    dead_lettered: bool = False
    # Only the columns written since it was cached; absent ones are unknown here.
    partial: bool = False


@dataclass(frozen=True)
class RowState:
    """A cached row and where its write is: clean, pending (accepted, not claimed by a
    flush yet), in_flight (claimed, not acknowledged yet) or dead_letter, and since when
    (Unix seconds; None where the cache does not know)."""

    row: CachedRow
    state: str
    since: float | None


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    fields: dict
    version: int
    writes: int = 1  # accepted writes this flush covers
    partial: bool = False
    # The span contexts kept of the writes it covers (chinook.tracing.split_links).
    links: str = ""


@dataclass(frozen=True)
class DeadLetter:
    entity: str
    id: int
    version: int
    error: str
    failed_at: float


def _parse_hash(row_id: int, raw: dict) -> CachedRow:
    fields = {k: v for k, v in raw.items() if not k.startswith(META_PREFIX)}
    return CachedRow(row_id, fields, int(raw["_ver"]), "_dirty" in raw, "_dead" in raw, "_partial" in raw)


def _parse_dead_letter(entity: str, row_id, raw: str) -> DeadLetter:
    entry = json.loads(raw)
    return DeadLetter(entity, int(row_id), int(entry["version"]), entry["error"], float(entry["failed_at"]) / 1000)


def _pairs_to_dict(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=False))


NULL = "\0"


def _encode_fields(fields: dict) -> list:
    """Column/value pairs of a whole row for HSET; NULL columns are left out of the hash."""
    flat = []
    for name, value in fields.items():
        if value is not None:
            flat += [name, str(value)]
    return flat


def _encode_patch(fields: dict) -> list:
    """Column/value pairs of a patch; a column set to NULL is sent as NULL (NUL, which
    validation refuses in any value), so ACCEPT removes it from the hash."""
    flat = []
    for name, value in fields.items():
        flat += [name, NULL if value is None else str(value)]
    return flat


@dataclass(frozen=True)
class ShardClaim:
    """What one CLAIM of a shard found: its pending and ready rows, and the rows claimed
    under the claim id `claim`, which their task carries."""

    pending: int
    ready: int
    rows: dict  # entity name to its claimed rows
    claim: str = ""


@dataclass(frozen=True)
class Acknowledged:
    """What an acknowledgement changed: rows made clean, with the accept-to-durable lag of
    each, rows confirmed durable under their claim (counted as flushed), and the ids of
    clean rows cached at an older version than acknowledged."""

    cleaned: int
    lags_ms: list
    flushed: int
    outdated: list


class RowStore:
    """The rows and their write-back bookkeeping, in `shards` shards on one Redis or on a
    Redis Cluster (`client` a redis.RedisCluster). With min_replicas, every accepted
    write is confirmed by that many replicas (Redis WAIT) before it counts as accepted."""

    def __init__(self, client, prefix: str, ttl_s: int, entities, max_pending: int = 1_000_000,
                 shards: int = 16, min_replicas: int = 0, replica_timeout_ms: int = 1000):
        self.redis = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.entities = tuple(entities)
        self.max_pending = max_pending
        self.shards = shards
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        # Each shard's pending rows as this process last saw them (accepts and claims
        # report them): the other shards' part of the WRITEBACK_MAX_PENDING check.
        self._shard_pending = [0] * shards
        self.layout_adopted = False
        self._accept = LIBRARY.function("accept")
        self._begin_fill = LIBRARY.function("begin_fill")
        self._fill = LIBRARY.function("fill")
        self._merge = LIBRARY.function("merge")
        self._uncached = LIBRARY.function("uncached")
        self._claim = LIBRARY.function("claim")
        self._ack = LIBRARY.function("ack")
        self._drop_outdated = LIBRARY.function("drop_outdated")
        self._expedite = LIBRARY.function("expedite")
        self._dead_letter = LIBRARY.function("dead_letter")
        self._resolve_dead_letter = LIBRARY.function("resolve_dead_letter")
        self._status = LIBRARY.function("status")
        self._inspect = LIBRARY.function("inspect")
        self._heartbeat = LIBRARY.function("heartbeat")

    # Keys

    def shard_of(self, row_id: int) -> int:
        return int(row_id) % self.shards

    def shard_prefix(self, shard: int, shards: int | None = None) -> str:
        return f"{self.prefix}{{{shard}/{shards or self.shards}}}:"

    def row_key(self, entity: str, row_id: int) -> str:
        return f"{self.shard_prefix(self.shard_of(row_id))}{entity}:{row_id}"

    def _row_prefix(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}{entity}:"

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}changes"

    @property
    def _layout(self) -> str:
        return f"{self.prefix}wb:layout"

    def due_key(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}wb:due:{entity}"

    def pending_key(self, shard: int, entity: str, shards: int | None = None) -> str:
        return f"{self.shard_prefix(shard, shards)}wb:pending:{entity}"

    def dead_key(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}wb:dead:{entity}"

    def _fill_prefix(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}fill:{entity}:"

    def stats_key(self, shard: int) -> str:
        return f"{self.shard_prefix(shard)}wb:stats"

    def _retired(self, shard: int, shards: int | None = None) -> str:
        return f"{self.shard_prefix(shard, shards)}wb:retired"

    # Running scripts

    def _by_shard(self, ids) -> dict[int, list[int]]:
        """The positions of `ids` grouped by shard, each group in the order given."""
        groups: dict[int, list[int]] = {}
        for position, row_id in enumerate(ids):
            groups.setdefault(int(row_id) % self.shards, []).append(position)
        return groups

    def _eval_many(self, calls: list, wait: bool = False) -> list:
        """Runs (script, keys, args) calls, pipelined: in one round trip to a single Redis,
        one per node of a cluster (each call's first key names its slot). With wait and
        min_replicas, each pipeline ends with WAIT on the same connection, and writes
        fewer replicas confirmed in time raise NotReplicated. Returns the replies in order."""
        wait = wait and self.min_replicas > 0
        if len(calls) == 1 and not wait and not self.cluster:
            function, keys, args = calls[0]
            try:
                return [self.redis.fcall(function, len(keys), *keys, *args)]
            except redis.ResponseError as exc:
                if not str(exc).startswith(NOT_FOUND):
                    raise
                ensure_loaded(LIBRARY, self.redis)
                return [self.redis.fcall(function, len(keys), *keys, *args)]
        replies = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(CLUSTER_ATTEMPTS):
            last = attempt == CLUSTER_ATTEMPTS - 1
            retry = []
            for client, positions in self._by_node(calls, todo):
                try:
                    node_replies = self._pipeline(client, [calls[i] for i in positions], wait)
                except (redis.ConnectionError, redis.TimeoutError):
                    if not self.cluster or last:
                        raise
                    retry += positions
                    continue
                for i, reply in zip(positions, node_replies, strict=False):
                    if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                                          redis.exceptions.TryAgainError)) and self.cluster and not last:
                        retry.append(i)
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        replies[i] = reply
            if not retry:
                return replies
            # A failover or a slot move: read the slot map again, then retry those calls,
            # waiting longer each time, since a failover takes about twice the cluster's
            # node timeout.
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
            try:
                self.redis.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                pass  # no node answered yet: the next try finds out
            todo = retry
        return replies

    def _by_node(self, calls: list, positions: list[int]) -> list[tuple[redis.Redis, list[int]]]:
        if not self.cluster:
            return [(self.redis, positions)]
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for i in positions:
            node = self.redis.get_node_from_key(calls[i][1][0])
            groups.setdefault(node.name, (self.redis.get_redis_connection(node), []))[1].append(i)
        return list(groups.values())

    def _pipeline(self, client: redis.Redis, calls: list, wait: bool) -> list:
        """The calls on one node in one round trip, plus one for the calls of functions the
        node lacks (new, or restarted without its data), once the library is loaded."""
        replies = [None] * len(calls)
        todo = range(len(calls))
        confirmed = None
        for _ in range(2):
            with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    function, keys, args = calls[i]
                    pipe.fcall(function, len(keys), *keys, *args)
                if wait:
                    pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
                round_replies = pipe.execute(raise_on_error=False)
            if wait:
                # WAIT counts the replicas holding every write made on its connection:
                # each round's own, since each round may take another connection.
                *round_replies, replicas = round_replies
                if isinstance(replicas, Exception):
                    raise replicas
                confirmed = replicas if confirmed is None else min(confirmed, replicas)
            for i, reply in zip(todo, round_replies, strict=False):
                replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], redis.ResponseError)
                    and str(replies[i]).startswith(NOT_FOUND)]
            if not todo:
                break
            ensure_loaded(LIBRARY, client)
        if wait and confirmed < self.min_replicas:
            raise NotReplicated(
                f"only {confirmed} of the {self.min_replicas} Redis replicas WRITEBACK_MIN_REPLICAS asks for "
                f"confirmed the write within {self.replica_timeout_ms} ms (WRITEBACK_REPLICA_TIMEOUT_MS); "
                "it is not accepted, retry shortly")
        return replies

    # Layout

    def ensure_layout(self):
        """adopt_layout() until it succeeded once: nothing is written or claimed before."""
        if not self.layout_adopted:
            self.adopt_layout()

    def adopt_layout(self):
        """Makes WRITEBACK_SHARDS the layout of the rows, at start. A Redis without one
        takes it; one laid out in another number of shards is switched only if nothing
        is pending there: its shards are retired first (a process still writing in them
        is refused from then on), then counted. Raises LayoutError otherwise."""
        for entity in self.entities:
            # Rows pending from before shards existed sit under the prefix itself.
            legacy = self.redis.zcard(f"{self.prefix}wb:pending:{entity}")
            if legacy:
                raise LayoutError(
                    f"{legacy} {entity} rows wait in Redis in the layout of a version without shards "
                    f"(key {self.prefix}wb:pending:{entity}): run that version until `POST /write-back/flush` "
                    "reports nothing pending, then start this one")
        self.redis.set(self._layout, self.shards, nx=True)
        current = int(self.redis.get(self._layout))
        if current != self.shards:
            old = range(current)
            for shard in old:
                self.redis.set(self._retired(shard, current), 1)
            pending = sum(self.redis.zcard(self.pending_key(shard, entity, current))
                          for shard in old for entity in self.entities)
            if pending:
                self.redis.delete(*(self._retired(shard, current) for shard in old))
                raise LayoutError(
                    f"WRITEBACK_SHARDS={self.shards}, but {pending} rows are pending in Redis under "
                    f"WRITEBACK_SHARDS={current}: keep {current} until `POST /write-back/flush` reports nothing "
                    "pending (stop the writers first), then change it")
            self.redis.set(self._layout, self.shards)
        self.redis.delete(*(self._retired(shard) for shard in range(self.shards)))
        self.layout_adopted = True

    # Reads and fills

    def ping(self):
        self.redis.ping()

    def get(self, entity: str, row_id: int) -> CachedRow | None:
        raw = self.redis.hgetall(self.row_key(entity, row_id))
        return _parse_hash(row_id, raw) if raw else None

    def inspect(self, entity: str, row_id: int, lease_ms: int) -> RowState | None:
        """The row as cached and the state of its write, None if it is not cached.
        lease_ms is the flushes' lease (WRITEBACK_LEASE_MS), which tells when a claimed
        row was claimed."""
        shard = self.shard_of(row_id)
        keys = [self.row_key(entity, row_id), self.due_key(shard, entity), self.pending_key(shard, entity),
                self.dead_key(shard, entity)]
        [(now_ms, flat, due, pending, dead, ttl_ms)] = self._eval_many([(self._inspect, keys, [row_id])])
        if not flat:
            return None
        raw = _pairs_to_dict(flat)
        row = _parse_hash(row_id, raw)
        now_ms = int(now_ms)
        if row.dead_lettered:
            return RowState(row, "dead_letter", _parse_dead_letter(entity, row_id, dead).failed_at if dead else None)
        if not row.dirty:
            # A row becomes clean (loaded, or flushed) with the whole TTL.
            known = 0 < ttl_ms <= self.ttl_s * 1000
            return RowState(row, "clean", (now_ms - self.ttl_s * 1000 + ttl_ms) / 1000 if known else None)
        if "_since" in raw:
            # A write accepted after the last claim, if any, waits for the next one.
            return RowState(row, "pending", int(raw["_since"]) / 1000)
        if due is not None and float(due) > 0:
            # Claimed: due at the end of its lease (past, if no acknowledgement came in
            # time and it waits to be claimed again).
            return RowState(row, "in_flight", (float(due) - lease_ms) / 1000)
        # Claimed once, then scheduled again: released, or a dead letter retried.
        return RowState(row, "pending", float(pending) / 1000 if pending is not None else None)

    def get_many(self, keys: list[tuple[str, int]]) -> list[CachedRow | None]:
        """(entity, id) rows in one round trip (one per node on a cluster)."""
        if len(keys) == 1:
            return [self.get(*keys[0])]
        with self.redis.pipeline(transaction=False) as pipe:
            for entity, row_id in keys:
                pipe.hgetall(self.row_key(entity, row_id))
            found = pipe.execute()
        return [_parse_hash(row_id, raw) if raw else None for (_, row_id), raw in zip(keys, found, strict=False)]

    def _chunked_calls(self, ids: list, size: int, call) -> tuple[list, list]:
        """call(shard, chunk of positions) -> (script, keys, args) for every chunk of
        every shard; returns the calls and their chunks of positions."""
        calls, chunks = [], []
        for shard, positions in self._by_shard(ids).items():
            for start in range(0, len(positions), size):
                chunk = positions[start:start + size]
                calls.append(call(shard, chunk))
                chunks.append(chunk)
        return calls, chunks

    def uncached_ids(self, entity: str, ids: list[int]) -> list[int]:
        calls, _ = self._chunked_calls(ids, CHUNK * 10, lambda shard, chunk: (
            self._uncached, [self.stats_key(shard)], [self._row_prefix(shard, entity), *(ids[i] for i in chunk)]))
        uncached = {int(row_id) for reply in self._eval_many(calls) for row_id in reply}
        return [row_id for row_id in ids if row_id in uncached]

    def begin_fill(self, entity: str, ids: list[int]) -> str:
        """Takes the fill token of each row before reading it from Postgres."""
        token = secrets.token_hex(8)
        calls, _ = self._chunked_calls(ids, CHUNK * 10, lambda shard, chunk: (
            self._begin_fill, [self.stats_key(shard)],
            [self._fill_prefix(shard, entity), token, FILL_TOKEN_TTL_MS, *(ids[i] for i in chunk)]))
        self._eval_many(calls)
        return token

    def fill(self, entity: str, token: str, rows: list[tuple[int, dict, int]], reply: bool = False) -> list:
        """Caches (id, fields, version) rows loaded from Postgres under `token`, where
        nobody cached the row meanwhile. With reply, returns each row as cached now, or
        None where it is not cached."""
        def call(shard, chunk):
            args = [self._row_prefix(shard, entity), self.ttl_s, token, int(reply), self._fill_prefix(shard, entity),
                    self.changes_channel, entity]
            for i in chunk:
                row_id, fields, version = rows[i]
                flat = _encode_fields(fields) + ["_ver", version]
                args += [row_id, len(flat) // 2, *flat]
            return self._fill, [self.stats_key(shard)], args

        calls, chunks = self._chunked_calls([row_id for row_id, _, _ in rows], CHUNK, call)
        cached = [None] * len(rows)
        for chunk, out in zip(chunks, self._eval_many(calls), strict=False):
            for i, raw in zip(chunk, out, strict=False):
                cached[i] = _parse_hash(rows[i][0], _pairs_to_dict(raw)) if raw else None
        return cached

    def merge(self, entity: str, rows: list[tuple[int, dict]]) -> list[CachedRow | None]:
        """Completes partial rows with (id, fields) read from Postgres; returns each row
        as cached now (None where it is not cached)."""
        def call(shard, chunk):
            args = [self._row_prefix(shard, entity)]
            for i in chunk:
                row_id, fields = rows[i]
                flat = _encode_fields(fields)
                args += [row_id, len(flat) // 2, *flat]
            return self._merge, [self.stats_key(shard)], args

        calls, chunks = self._chunked_calls([row_id for row_id, _ in rows], CHUNK, call)
        merged = [None] * len(rows)
        for chunk, out in zip(chunks, self._eval_many(calls), strict=False):
            for i, raw in zip(chunk, out, strict=False):
                merged[i] = _parse_hash(rows[i][0], _pairs_to_dict(raw)) if raw else None
        return merged

    # Writes

    def _accept_calls(self, entity: str, updates: list[tuple[int, dict]], reply: bool, bases: dict,
                      links: list | None):
        known = sum(self._shard_pending)
        links = links if links and any(links) else None
        links_kept = LINKS_PER_ROW * LINK_WIDTH if links else ""

        def call(shard, chunk):
            keys = [self.due_key(shard, entity), self.pending_key(shard, entity), self.stats_key(shard),
                    self.dead_key(shard, entity), self._retired(shard)]
            keys += [self.pending_key(shard, name) for name in self.entities]
            args = [self._row_prefix(shard, entity), self.max_pending, self.changes_channel, entity, int(reply),
                    max(0, known - self._shard_pending[shard]), links_kept]
            for i in chunk:
                row_id, fields = updates[i]
                flat = _encode_patch(fields)
                if links:
                    args += [row_id, bases.get(row_id, -1), links[i] or "", len(flat) // 2, *flat]
                else:
                    args += [row_id, bases.get(row_id, -1), len(flat) // 2, *flat]
            return self._accept, keys, args

        return self._chunked_calls([row_id for row_id, _ in updates], CHUNK, call)

    def _run_accept(self, entity: str, updates: list[tuple[int, dict]], reply: bool, bases: dict,
                    links: list | None = None) -> list:
        """Each update's reply: its version, and with reply the row as it is now. links,
        while tracing is on: for each update the context of the span that accepted it
        (chinook.tracing.current_link), or None."""
        self.ensure_layout()
        calls, chunks = self._accept_calls(entity, updates, reply, bases, links)
        try:
            replies = self._eval_many(calls, wait=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("RETIRED"):
                raise ShardRetired(
                    f"the rows in Redis are now laid out in another number of shards than WRITEBACK_SHARDS="
                    f"{self.shards}: restart this cache-svc with the current one") from None
            raise
        results = [None] * len(updates)
        width = 2 if reply else 1
        for chunk, out in zip(chunks, replies, strict=False):
            *out, shard_pending = out
            self._shard_pending[self.shard_of(updates[chunk[0]][0])] = shard_pending
            for n, i in enumerate(chunk):
                results[i] = out[n * width:(n + 1) * width]
        return results

    def accept_each(self, entity: str, updates: list[tuple[int, dict]],
                    links: list | None = None) -> list[tuple[int, CachedRow | None]]:
        """Applies (id, fields) updates in order, each on its own: returns (version, the
        whole row now) for each, or (-1, None) where the row is not cached and (-2, None)
        where it would exceed the pending limit. links as in _run_accept."""
        return [(version, _parse_hash(row_id, _pairs_to_dict(raw)) if version > 0 else None)
                for (row_id, _), (version, raw)
                in zip(updates, self._run_accept(entity, updates, True, {}, links), strict=False)]

    def accept(self, entity: str, updates: list[tuple[int, dict]], bases: dict | None = None,
               links: list | None = None) -> list[int]:
        """Applies (id, fields) updates in order; returns each new version, -1 where
        the row is not cached. A row not cached whose id is in `bases` (id to the version
        Postgres holds) is cached as a partial row instead. Raises Backpressure, after
        applying the others, if a row would exceed the pending limit."""
        versions = [version for version, in self._run_accept(entity, updates, False, bases or {}, links)]
        if -2 in versions:
            raise Backpressure(
                f"{self.pending_total()} rows are waiting to be written to Postgres, the limit is "
                f"{self.max_pending} (WRITEBACK_MAX_PENDING); retry shortly"
            )
        return versions

    # Flushing

    def claim(self, delay_ms: int, batch_size: int, lease_ms: int, shards=None,
              claim: str | None = None) -> list[ShardClaim]:
        """Claims what is due in each of `shards` (all by default), as CLAIM does, under
        `claim`, or a fresh claim id."""
        self.ensure_layout()
        shards = range(self.shards) if shards is None else shards
        claim = claim or new_claim_id()
        calls = [(self._claim, [key for name in self.entities for key in (self.due_key(shard, name),
                                                                           self.pending_key(shard, name))],
                  [self.shard_prefix(shard), delay_ms, batch_size, lease_ms, self.changes_channel, claim,
                   *self.entities])
                 for shard in shards]
        claims = []
        for shard, (pending, ready, *claimed) in zip(shards, self._eval_many(calls), strict=False):
            self._shard_pending[shard] = pending
            rows = {}
            for name, flat in zip(claimed[::2], claimed[1::2], strict=False):
                rows[name] = []
                for row_id, raw in zip(flat[::2], flat[1::2], strict=False):
                    values = _pairs_to_dict(raw)
                    row = _parse_hash(int(row_id), values)
                    rows[name].append(ClaimedRow(row.id, row.fields, row.version, int(values.get("_writes", 1)),
                                                 row.partial, values.get("_links", "")))
            claims.append(ShardClaim(pending, ready, rows, claim))
        return claims

    def release(self, entity: str, ids: list[int]):
        """Makes claimed rows claimable again at once (their task was never published)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for shard, positions in self._by_shard(ids).items():
                pipe.zadd(self.due_key(shard, entity), {str(ids[i]): 0 for i in positions}, xx=True)
            pipe.execute()

    def ack(self, entity: str, versions: list[tuple[int, int]], claim: str) -> Acknowledged:
        """Marks the (id, version) rows flushed under `claim` clean, as ACK does."""
        calls = []
        for shard, positions in self._by_shard([row_id for row_id, _ in versions]).items():
            args = [self._row_prefix(shard, entity), self.ttl_s, self.changes_channel, entity, claim]
            for i in positions:
                args += list(versions[i])
            calls.append((self._ack, [self.due_key(shard, entity), self.pending_key(shard, entity), self.stats_key(shard)],
                          args))
        cleaned, lags, flushed, outdated = 0, [], 0, []
        for shard_cleaned, shard_lags, shard_flushed, shard_outdated in (self._eval_many(calls) if calls else []):
            cleaned += shard_cleaned
            lags += shard_lags
            flushed += shard_flushed
            outdated += [int(row_id) for row_id in shard_outdated]
        return Acknowledged(cleaned, lags, flushed, outdated)

    def drop_outdated(self, entity: str, stored: dict[int, int]) -> int:
        """Drops the clean rows cached at an older version than `stored` (id to the version
        Postgres holds) gives; returns how many."""
        ids = list(stored)
        calls = [(self._drop_outdated, [self.stats_key(shard)],
                  [self._row_prefix(shard, entity), self.changes_channel, entity,
                   *(value for i in positions for value in (ids[i], stored[ids[i]]))])
                 for shard, positions in self._by_shard(ids).items()]
        return sum(self._eval_many(calls)) if calls else 0

    def expedite(self) -> int:
        """Makes every waiting dirty row claimable now; returns how many."""
        return sum(self._eval_many([(self._expedite, [self.due_key(shard, name)], [])
                                    for shard in range(self.shards) for name in self.entities]))

    # Status and dead letters

    def summary(self) -> tuple[dict[str, tuple[int, float | None]], int]:
        """Each entity's pending rows and the accept time (ms) of its oldest pending
        write, and the number of dead letters: one call per shard."""
        pending = {name: (0, None) for name in self.entities}
        dead_letters = 0
        for entities, dead in self._shard_statuses():
            dead_letters += dead
            for name, (count, oldest) in zip(self.entities, entities, strict=False):
                total, first = pending[name]
                if oldest is not None and (first is None or oldest < first):
                    first = oldest
                pending[name] = (total + count, first)
        return pending, dead_letters

    def _shard_statuses(self) -> list[tuple[list[tuple[int, float | None]], int]]:
        calls = [(self._status, [self.pending_key(shard, name) for name in self.entities] +
                  [self.dead_key(shard, name) for name in self.entities], []) for shard in range(self.shards)]
        statuses = []
        for shard, (*flat, dead) in enumerate(self._eval_many(calls)):
            entities = [(int(count), float(oldest) if oldest is not None else None)
                        for count, oldest in zip(flat[::2], flat[1::2], strict=False)]
            self._shard_pending[shard] = sum(count for count, _ in entities)
            statuses.append((entities, dead))
        return statuses

    def pending_total(self) -> int:
        return sum(count for count, _ in self.summary()[0].values())

    def counters(self) -> dict:
        with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(self.stats_key(shard))
            totals: dict[str, int] = {}
            for raw in pipe.execute():
                for name, value in raw.items():
                    totals[name] = totals.get(name, 0) + int(value)
        return totals

    def dead_letter(self, entity: str, failures: list[tuple[int, int, str]], claim: str) -> int:
        """Dead-letters (id, version, error) rows in flight under `claim` at that version."""
        calls = []
        for shard, positions in self._by_shard([row_id for row_id, _, _ in failures]).items():
            args = [self._row_prefix(shard, entity), self.changes_channel, entity, claim]
            for i in positions:
                args += list(failures[i])
            calls.append((self._dead_letter, [self.due_key(shard, entity), self.pending_key(shard, entity),
                                              self.dead_key(shard, entity)], args))
        return sum(self._eval_many(calls)) if calls else 0

    def dead_letters(self, entity: str) -> list[DeadLetter]:
        with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(self.dead_key(shard, entity))
            found = pipe.execute()
        return sorted((_parse_dead_letter(entity, row_id, raw) for entries in found for row_id, raw in entries.items()),
                      key=lambda d: d.failed_at)

    def resolve_dead_letter(self, entity: str, row_id: int, action: str) -> DeadLetter | None:
        """action 'retry' schedules the write again, 'discard' drops the cached row."""
        shard = self.shard_of(row_id)
        [raw] = self._eval_many([(
            self._resolve_dead_letter,
            [self.due_key(shard, entity), self.pending_key(shard, entity), self.dead_key(shard, entity)],
            [self._row_prefix(shard, entity), row_id, action, self.changes_channel, entity])])
        return _parse_dead_letter(entity, row_id, raw) if raw else None

    def heartbeat(self) -> list[int]:
        """Publishes a watermark of every shard (HEARTBEAT), from the node holding it: one
        call on a single Redis, one per primary on a cluster. Returns each call's Redis time."""
        by_node: dict[str, list[int]] = {}
        for shard in range(self.shards):
            node = self.redis.get_node_from_key(self.stats_key(shard)).name if self.cluster else ""
            by_node.setdefault(node, []).append(shard)
        return [int(now_us) for now_us in self._eval_many([
            (self._heartbeat, [self.stats_key(shards[0])], [self.changes_channel, self.shards, *shards])
            for shards in by_node.values()])]

    def now_ms(self) -> float:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros / 1000
