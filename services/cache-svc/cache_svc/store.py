"""Rows, versions and the write-back bookkeeping in Redis.

Layout, under the configured key prefix `p`:
- `p{entity}:{id}`, a hash: the row's columns, `_ver` (its version), `_dirty` (set
  while Postgres lags behind) and `_since` (when the oldest write not yet claimed by
  a flush was accepted). Clean rows carry the TTL; dirty rows have none, so a
  `volatile-*` maxmemory policy never evicts them. A NULL column is absent, except in a
  partial row.
- A partial row (`_partial` set) is one a bulk update accepted without reading it from
  Postgres first: it holds only the columns written since (a NULL one as NUL), and a flush
  writes only those. A read completes it from Postgres first (MERGE).
- `p wb:due:{entity}`, a sorted set: the dirty rows and when each may next be claimed
  for a flush (its first pending accept time, or the end of its lease once claimed).
  This set, not the queue, is the record of pending writes.
- `p wb:pending:{entity}`, a sorted set: the dirty rows and the accept time of the
  oldest write of each that is not yet durable.
- `p wb:dead:{entity}`, a hash: the dead letters, rows whose write Postgres kept
  refusing, with the version and the error. They stay dirty but are not scheduled.
- `p fill:{entity}:{id}`: a token set before a cache miss is loaded from Postgres. Only
  the loader holding the current token may cache what it read, so a slow load can
  never cache a value older than one written and flushed meanwhile.
- `p wb:stats`, a hash of counters.
- `p changes`, a pub/sub channel: each script that changes cached rows publishes what
  it changed (see CacheService.WatchChanges), in the same atomic step, so subscribers
  see changes in the order Redis applied them.

Each step that changes a row and its bookkeeping is one Lua script, so it is atomic.
"""

import json
import secrets
from dataclasses import dataclass

import redis

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
# created as a partial row. A row that would take the pending rows of all entities
# (KEYS[5...]) beyond ARGV[2] gives -2 and is not applied. With ARGV[5] = 1 each
# version is followed by the whole row as it is now (empty where not applied), and the
# published change carries each whole row's values (kind "v"), so near caches holding
# the row can take the new value instead of dropping it. The
# version is a hybrid clock: above the previous version (or the base) and at least the
# Redis server's time in microseconds, so versions keep growing even after Redis lost
# its data and rows were reloaded from Postgres.
ACCEPT = PUBLISH + """
local due, pending, stats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, max_pending = ARGV[1], tonumber(ARGV[2])
local channel, entity, reply = ARGV[3], ARGV[4], ARGV[5] == '1'
local changed, valued, NULL = {}, {}, '\\0'
local total_pending = 0
for k = 5, #KEYS do total_pending = total_pending + redis.call('ZCARD', KEYS[k]) end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = string.format('%d', math.floor(now_us / 1000))
local out, due_args, pending_args, i = {}, {'ZADD', due, 'LT'}, {'ZADD', pending}, 6
while i <= #ARGV do
  local id, base, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
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
    for j = i + 3, i + 1 + 2 * n, 2 do
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
  i = i + 3 + 2 * n
end
publish(channel, entity, 'w', now_ms, changed)
publish(channel, entity, 'v', now_ms, valued)
if #due_args > 3 then
  redis.call(unpack(due_args))
  redis.call('HINCRBY', stats, 'accepted', (#due_args - 3) / 2)
end
if #pending_args > 2 then redis.call(unpack(pending_args)) end
return out
"""

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

# Claims up to a batch of dirty rows for a flush: when a whole batch is ready, or
# when the oldest ready row has waited the delay. Claimed rows are leased: if no
# worker acknowledges them before the lease ends, they are claimed again.
CLAIM = PUBLISH + """
local due, pending = KEYS[1], KEYS[2]
local prefix, delay, batch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local channel, entity, gone = ARGV[5], ARGV[6], {}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ready = redis.call('ZCOUNT', due, '-inf', now)
if ready == 0 then return {} end
if ready < batch then
  local oldest = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if tonumber(oldest[2]) > now - delay then return {} end
end
local out = {}
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
    redis.call('HDEL', key, '_since', '_writes')
    out[#out + 1] = id
    out[#out + 1] = row
  end
end
publish(channel, entity, 'd', string.format('%d', now), gone)
return out
"""

# Marks flushed rows clean, but only where the cached version is the flushed one:
# a row updated since stays dirty. Returns the number cleaned, then the
# accept-to-durable lag in ms of each cleaned row.
ACK = PUBLISH + """
local due, pending, stats = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl, written, channel, entity = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cleaned, lags, clean, dropped = 0, {}, {}, {}
for i = 6, #ARGV, 2 do
  local id, flushed = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  local current = redis.call('HGET', key, '_ver')
  if not current then
    redis.call('ZREM', due, id)
    redis.call('ZREM', pending, id)
  else
    current = tonumber(current)
    if current == flushed then
      local since = redis.call('ZSCORE', pending, id)
      if since then lags[#lags + 1] = now - tonumber(since) end
      redis.call('HDEL', key, '_dirty', '_since')
      redis.call('EXPIRE', key, ttl)
      redis.call('ZREM', due, id)
      redis.call('ZREM', pending, id)
      cleaned = cleaned + 1
      clean[#clean + 1] = '[' .. id .. ',' .. ARGV[i + 1] .. ']'
    elseif current > flushed then
      local since = redis.call('HGET', key, '_since')
      if since then redis.call('ZADD', pending, 'XX', since, id) end
    elseif redis.call('HEXISTS', key, '_dirty') == 0 then
      -- Postgres holds a newer version than this clean entry: drop it, a read reloads it.
      redis.call('DEL', key)
      dropped[#dropped + 1] = '[' .. id .. ']'
    end
  end
end
publish(channel, entity, 'c', string.format('%d', now), clean)
publish(channel, entity, 'd', string.format('%d', now), dropped)
if written > 0 then redis.call('HINCRBY', stats, 'flushed', written) end
return {cleaned, lags}
"""

# Makes every waiting dirty row claimable now; rows already claimed keep their lease.
EXPEDITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', 0, id) end
return #ids
"""

# Takes rows out of the flush schedule when Postgres kept refusing their version; a
# row written again since keeps flowing, and a clean one (nothing of it was pending) is
# left alone. Returns how many were dead-lettered.
DEAD_LETTER = PUBLISH + """
local due, pending, dead, prefix, channel, entity = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count, changed = 0, {}
for i = 4, #ARGV, 3 do
  local id, version, error = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local meta = redis.call('HMGET', key, '_ver', '_dirty')
  if meta[1] == version and meta[2] then
    redis.call('HSET', key, '_dead', '1')
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

# The ids (ARGV[2...]) whose row is not cached under the prefix ARGV[1]: checked in
# Redis, so a bulk of cached rows costs one small reply per chunk, not one per row.
UNCACHED = """
local prefix, out = ARGV[1], {}
for i = 2, #ARGV do
  if redis.call('EXISTS', prefix .. ARGV[i]) == 0 then out[#out + 1] = ARGV[i] end
end
return out
"""

# Rows per script call: long enough to amortise the round trip, short enough not to
# stall other clients of Redis.
CHUNK = 1000
# A load from Postgres slower than this gives up caching what it read.
FILL_TOKEN_TTL_MS = 30_000


class Backpressure(Exception):
    """Too many rows are pending; the write was not accepted."""


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
class ClaimedRow:
    id: int
    fields: dict
    version: int
    writes: int = 1  # accepted writes this flush covers
    partial: bool = False


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
    return dict(zip(flat[::2], flat[1::2]))


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


class RowStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int, entities, max_pending: int = 1_000_000):
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.entities = tuple(entities)
        self.max_pending = max_pending
        self._accept = client.register_script(ACCEPT)
        self._begin_fill = client.register_script(BEGIN_FILL)
        self._fill = client.register_script(FILL)
        self._merge = client.register_script(MERGE)
        self._uncached = client.register_script(UNCACHED)
        self._claim = client.register_script(CLAIM)
        self._ack = client.register_script(ACK)
        self._expedite = client.register_script(EXPEDITE)
        self._dead_letter = client.register_script(DEAD_LETTER)
        self._resolve_dead_letter = client.register_script(RESOLVE_DEAD_LETTER)

    def row_prefix(self, entity: str) -> str:
        return f"{self.prefix}{entity}:"

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}changes"

    def _due(self, entity: str) -> str:
        return f"{self.prefix}wb:due:{entity}"

    def _pending(self, entity: str) -> str:
        return f"{self.prefix}wb:pending:{entity}"

    def _dead(self, entity: str) -> str:
        return f"{self.prefix}wb:dead:{entity}"

    def _fill_prefix(self, entity: str) -> str:
        return f"{self.prefix}fill:{entity}:"

    @property
    def _stats(self) -> str:
        return f"{self.prefix}wb:stats"

    def ping(self):
        self.redis.ping()

    def get(self, entity: str, row_id: int) -> CachedRow | None:
        raw = self.redis.hgetall(f"{self.row_prefix(entity)}{row_id}")
        return _parse_hash(row_id, raw) if raw else None

    def get_many(self, keys: list[tuple[str, int]]) -> list[CachedRow | None]:
        """(entity, id) rows in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for entity, row_id in keys:
                pipe.hgetall(f"{self.row_prefix(entity)}{row_id}")
            found = pipe.execute()
        return [_parse_hash(row_id, raw) if raw else None for (_, row_id), raw in zip(keys, found)]

    def uncached_ids(self, entity: str, ids: list[int]) -> list[int]:
        uncached = []
        for start in range(0, len(ids), CHUNK * 10):
            uncached += map(int, self._uncached(keys=[], args=[self.row_prefix(entity), *ids[start:start + CHUNK * 10]]))
        return uncached

    def begin_fill(self, entity: str, ids: list[int]) -> str:
        """Takes the fill token of each row before reading it from Postgres."""
        token = secrets.token_hex(8)
        prefix = self._fill_prefix(entity)
        for start in range(0, len(ids), CHUNK * 10):
            self._begin_fill(keys=[], args=[prefix, token, FILL_TOKEN_TTL_MS, *ids[start:start + CHUNK * 10]])
        return token

    def fill(self, entity: str, token: str, rows: list[tuple[int, dict, int]], reply: bool = False) -> list:
        """Caches (id, fields, version) rows loaded from Postgres under `token`, where
        nobody cached the row meanwhile. With reply, returns each row as cached now, or
        None where it is not cached."""
        cached = []
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            args = [self.row_prefix(entity), self.ttl_s, token, int(reply), self._fill_prefix(entity),
                    self.changes_channel, entity]
            for row_id, fields, version in chunk:
                flat = _encode_fields(fields) + ["_ver", version]
                args += [row_id, len(flat) // 2, *flat]
            out = self._fill(keys=[], args=args)
            cached += [_parse_hash(row_id, _pairs_to_dict(raw)) if raw else None
                       for (row_id, _, _), raw in zip(chunk, out)]
        return cached

    def merge(self, entity: str, rows: list[tuple[int, dict]]) -> list[CachedRow | None]:
        """Completes partial rows with (id, fields) read from Postgres; returns each row
        as cached now (None where it is not cached)."""
        args = [self.row_prefix(entity)]
        for row_id, fields in rows:
            flat = _encode_fields(fields)
            args += [row_id, len(flat) // 2, *flat]
        out = self._merge(keys=[], args=args)
        return [_parse_hash(row_id, _pairs_to_dict(raw)) if raw else None for (row_id, _), raw in zip(rows, out)]

    def _accept_chunk(self, entity: str, updates: list[tuple[int, dict]], reply: bool, bases: dict) -> list:
        keys = [self._due(entity), self._pending(entity), self._stats, self._dead(entity)]
        keys += [self._pending(name) for name in self.entities]
        args = [self.row_prefix(entity), self.max_pending, self.changes_channel, entity, int(reply)]
        for row_id, fields in updates:
            flat = _encode_patch(fields)
            args += [row_id, bases.get(row_id, -1), len(flat) // 2, *flat]
        return self._accept(keys=keys, args=args)

    def accept_each(self, entity: str, updates: list[tuple[int, dict]]) -> list[tuple[int, CachedRow | None]]:
        """Applies (id, fields) updates in order, each on its own: returns (version, the
        whole row now) for each, or (-1, None) where the row is not cached and (-2, None)
        where it would exceed the pending limit."""
        results = []
        for start in range(0, len(updates), CHUNK):
            chunk = updates[start:start + CHUNK]
            out = self._accept_chunk(entity, chunk, reply=True, bases={})
            results += [(version, _parse_hash(row_id, _pairs_to_dict(raw)) if version > 0 else None)
                        for (row_id, _), version, raw in zip(chunk, out[::2], out[1::2])]
        return results

    def accept(self, entity: str, updates: list[tuple[int, dict]], bases: dict | None = None) -> list[int]:
        """Applies (id, fields) updates in order; returns each new version, -1 where
        the row is not cached. A row not cached whose id is in `bases` (id to the version
        Postgres holds) is cached as a partial row instead. Raises Backpressure, after
        applying the rows before it, at the first row that would exceed the pending limit."""
        versions = []
        for start in range(0, len(updates), CHUNK):
            chunk_versions = self._accept_chunk(entity, updates[start:start + CHUNK], reply=False,
                                                bases=bases or {})
            if -2 in chunk_versions:
                raise Backpressure(
                    f"{self.pending_total()} rows are waiting to be written to Postgres, the limit is "
                    f"{self.max_pending} (WRITEBACK_MAX_PENDING); retry shortly"
                )
            versions += chunk_versions
        return versions

    def claim(self, entity: str, delay_ms: int, batch_size: int, lease_ms: int) -> list[ClaimedRow]:
        flat = self._claim(keys=[self._due(entity), self._pending(entity)],
                           args=[self.row_prefix(entity), delay_ms, batch_size, lease_ms, self.changes_channel,
                                 entity])
        claimed = []
        for row_id, raw in zip(flat[::2], flat[1::2]):
            values = _pairs_to_dict(raw)
            row = _parse_hash(int(row_id), values)
            claimed.append(ClaimedRow(row.id, row.fields, row.version, int(values.get("_writes", 1)), row.partial))
        return claimed

    def release(self, entity: str, ids: list[int]):
        """Makes claimed rows claimable again at once (their task was never published)."""
        if ids:
            self.redis.zadd(self._due(entity), {str(i): 0 for i in ids}, xx=True)

    def ack(self, entity: str, versions: list[tuple[int, int]], written: int) -> tuple[int, list[int]]:
        args = [self.row_prefix(entity), self.ttl_s, written, self.changes_channel, entity]
        for row_id, version in versions:
            args += [row_id, version]
        cleaned, lags = self._ack(keys=[self._due(entity), self._pending(entity), self._stats], args=args)
        return cleaned, lags

    def expedite(self, entity: str) -> int:
        return self._expedite(keys=[self._due(entity)])

    def pending(self, entity: str) -> tuple[int, float | None]:
        """Pending rows and the accept time (ms) of the oldest pending write."""
        key = self._pending(entity)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            count, oldest = pipe.execute()
        return count, (oldest[0][1] if oldest else None)

    def pending_total(self) -> int:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in self.entities:
                pipe.zcard(self._pending(name))
            return sum(pipe.execute())

    def counters(self) -> dict:
        raw = self.redis.hgetall(self._stats)
        return {name: int(value) for name, value in raw.items()}

    def dead_letter(self, entity: str, failures: list[tuple[int, int, str]]) -> int:
        """Dead-letters (id, version, error) rows whose cached version is still that one."""
        args = [self.row_prefix(entity), self.changes_channel, entity]
        for row_id, version, error in failures:
            args += [row_id, version, error]
        return self._dead_letter(keys=[self._due(entity), self._pending(entity), self._dead(entity)], args=args)

    def dead_letters(self, entity: str) -> list[DeadLetter]:
        return sorted((_parse_dead_letter(entity, row_id, raw) for row_id, raw in
                       self.redis.hgetall(self._dead(entity)).items()), key=lambda d: d.failed_at)

    def dead_letter_count(self) -> int:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in self.entities:
                pipe.hlen(self._dead(name))
            return sum(pipe.execute())

    def resolve_dead_letter(self, entity: str, row_id: int, action: str) -> DeadLetter | None:
        """action 'retry' schedules the write again, 'discard' drops the cached row."""
        raw = self._resolve_dead_letter(keys=[self._due(entity), self._pending(entity), self._dead(entity)],
                                        args=[self.row_prefix(entity), row_id, action, self.changes_channel,
                                              entity])
        return _parse_dead_letter(entity, row_id, raw) if raw else None

    def now_ms(self) -> float:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros / 1000
