"""Rows, versions and the write-back bookkeeping in Redis.

Layout, under the configured key prefix `p`:
- `p{entity}:{id}`, a hash: the row's columns, `_ver` (its version), `_dirty` (set
  while Postgres lags behind) and `_since` (when the oldest write not yet claimed by
  a flush was accepted). Clean rows carry the TTL; dirty rows have none, so a
  `volatile-*` maxmemory policy never evicts them.
- `p wb:due:{entity}`, a sorted set: the dirty rows and when each may next be claimed
  for a flush (its first pending accept time, or the end of its lease once claimed).
  This set, not the queue, is the record of pending writes.
- `p wb:pending:{entity}`, a sorted set: the dirty rows and the accept time of the
  oldest write of each that is not yet durable.
- `p wb:stats`, a hash of counters.

Each step that changes a row and its bookkeeping is one Lua script, so it is atomic.
"""

from dataclasses import dataclass

import redis

META_PREFIX = "_"

# Applies updates to cached rows. A row that is not cached gives -1 (the caller loads
# it and tries again). The version is a hybrid clock: above the previous version and
# at least the Redis server's time in microseconds, so versions keep growing even
# after Redis lost its data and rows were reloaded from Postgres.
ACCEPT = """
local due, pending, stats = KEYS[1], KEYS[2], KEYS[3]
local prefix = ARGV[1]
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = string.format('%d', math.floor(now_us / 1000))
local out, accepted, i = {}, 0, 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  local current = redis.call('HGET', key, '_ver')
  if not current then
    out[#out + 1] = -1
  else
    local version = math.max(tonumber(current) + 1, now_us)
    local command = {'HSET', key, '_ver', string.format('%d', version), '_dirty', '1'}
    for j = i + 2, i + 1 + 2 * n do command[#command + 1] = ARGV[j] end
    redis.call(unpack(command))
    redis.call('HSETNX', key, '_since', now_ms)
    redis.call('PERSIST', key)
    redis.call('ZADD', due, 'LT', now_ms, id)
    redis.call('ZADD', pending, 'NX', now_ms, id)
    out[#out + 1] = version
    accepted = accepted + 1
  end
  i = i + 2 + 2 * n
end
if accepted > 0 then redis.call('HINCRBY', stats, 'accepted', accepted) end
return out
"""

# Caches rows loaded from Postgres, unless the cache already holds the row (it may
# hold a newer, dirty version). With ARGV[3] = 1, returns each row as cached.
FILL = """
local prefix, ttl, reply = ARGV[1], ARGV[2], ARGV[3] == '1'
local out, i = {}, 4
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = prefix .. id
  if redis.call('EXISTS', key) == 0 then
    local command = {'HSET', key}
    for j = i + 2, i + 1 + 2 * n do command[#command + 1] = ARGV[j] end
    redis.call(unpack(command))
    redis.call('EXPIRE', key, ttl)
  end
  if reply then out[#out + 1] = redis.call('HGETALL', key) end
  i = i + 2 + 2 * n
end
return out
"""

# Claims up to a batch of dirty rows for a flush: when a whole batch is ready, or
# when the oldest ready row has waited the delay. Claimed rows are leased: if no
# worker acknowledges them before the lease ends, they are claimed again.
CLAIM = """
local due, pending = KEYS[1], KEYS[2]
local prefix, delay, batch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
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
  else
    redis.call('ZADD', due, 'XX', now + lease, id)
    redis.call('HDEL', key, '_since')
    out[#out + 1] = id
    out[#out + 1] = row
  end
end
return out
"""

# Marks flushed rows clean, but only where the cached version is the flushed one:
# a row updated since stays dirty. Returns the number cleaned, then the
# accept-to-durable lag in ms of each cleaned row.
ACK = """
local due, pending, stats = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl, written = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cleaned, lags = 0, {}
for i = 4, #ARGV, 2 do
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
    elseif current > flushed then
      local since = redis.call('HGET', key, '_since')
      if since then redis.call('ZADD', pending, 'XX', since, id) end
    elseif redis.call('HEXISTS', key, '_dirty') == 0 then
      -- Postgres holds a newer version than this clean entry: drop it, a read reloads it.
      redis.call('DEL', key)
    end
  end
end
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

# Rows per script call: long enough to amortise the round trip, short enough not to
# stall other clients of Redis.
CHUNK = 1000


@dataclass(frozen=True)
class CachedRow:
    id: int
    fields: dict  # column name to string value, as stored; absent means NULL
    version: int
    dirty: bool


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    fields: dict
    version: int


def _parse_hash(row_id: int, raw: dict) -> CachedRow:
    fields = {k: v for k, v in raw.items() if not k.startswith(META_PREFIX)}
    return CachedRow(row_id, fields, int(raw["_ver"]), "_dirty" in raw)


def _pairs_to_dict(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def _encode_fields(fields: dict) -> list:
    """Column/value pairs for HSET; NULL columns are left out of the hash."""
    flat = []
    for name, value in fields.items():
        if value is not None:
            flat += [name, str(value)]
    return flat


class RowStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int):
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._accept = client.register_script(ACCEPT)
        self._fill = client.register_script(FILL)
        self._claim = client.register_script(CLAIM)
        self._ack = client.register_script(ACK)
        self._expedite = client.register_script(EXPEDITE)

    def row_prefix(self, entity: str) -> str:
        return f"{self.prefix}{entity}:"

    def _bookkeeping_keys(self, entity: str) -> list:
        return [f"{self.prefix}wb:due:{entity}", f"{self.prefix}wb:pending:{entity}", f"{self.prefix}wb:stats"]

    def ping(self):
        self.redis.ping()

    def get(self, entity: str, row_id: int) -> CachedRow | None:
        raw = self.redis.hgetall(f"{self.row_prefix(entity)}{row_id}")
        return _parse_hash(row_id, raw) if raw else None

    def cached_ids(self, entity: str, ids: list[int]) -> set[int]:
        prefix = self.row_prefix(entity)
        found = set()
        for start in range(0, len(ids), CHUNK * 10):
            chunk = ids[start:start + CHUNK * 10]
            with self.redis.pipeline(transaction=False) as pipe:
                for row_id in chunk:
                    pipe.exists(f"{prefix}{row_id}")
                found.update(i for i, present in zip(chunk, pipe.execute()) if present)
        return found

    def fill(self, entity: str, rows: list[tuple[int, dict, int]], reply: bool = False) -> list[CachedRow]:
        """Caches (id, fields, version) rows loaded from Postgres, where not cached yet."""
        cached = []
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            args = [self.row_prefix(entity), self.ttl_s, int(reply)]
            for row_id, fields, version in chunk:
                flat = _encode_fields(fields) + ["_ver", version]
                args += [row_id, len(flat) // 2, *flat]
            out = self._fill(keys=[], args=args)
            cached += [_parse_hash(row_id, _pairs_to_dict(raw)) for (row_id, _, _), raw in zip(chunk, out)]
        return cached

    def accept(self, entity: str, updates: list[tuple[int, dict]]) -> list[int]:
        """Applies (id, fields) updates in order; returns each new version, -1 if not cached."""
        versions = []
        keys = self._bookkeeping_keys(entity)
        for start in range(0, len(updates), CHUNK):
            args = [self.row_prefix(entity)]
            for row_id, fields in updates[start:start + CHUNK]:
                flat = _encode_fields(fields)
                args += [row_id, len(flat) // 2, *flat]
            versions += self._accept(keys=keys, args=args)
        return versions

    def claim(self, entity: str, delay_ms: int, batch_size: int, lease_ms: int) -> list[ClaimedRow]:
        flat = self._claim(keys=self._bookkeeping_keys(entity)[:2],
                           args=[self.row_prefix(entity), delay_ms, batch_size, lease_ms])
        claimed = []
        for row_id, raw in zip(flat[::2], flat[1::2]):
            row = _parse_hash(int(row_id), _pairs_to_dict(raw))
            claimed.append(ClaimedRow(row.id, row.fields, row.version))
        return claimed

    def release(self, entity: str, ids: list[int]):
        """Makes claimed rows claimable again at once (their task was never published)."""
        due = self._bookkeeping_keys(entity)[0]
        if ids:
            self.redis.zadd(due, {str(i): 0 for i in ids}, xx=True)

    def ack(self, entity: str, versions: list[tuple[int, int]], written: int) -> tuple[int, list[int]]:
        args = [self.row_prefix(entity), self.ttl_s, written]
        for row_id, version in versions:
            args += [row_id, version]
        cleaned, lags = self._ack(keys=self._bookkeeping_keys(entity), args=args)
        return cleaned, lags

    def expedite(self, entity: str) -> int:
        return self._expedite(keys=self._bookkeeping_keys(entity)[:1])

    def pending(self, entity: str) -> tuple[int, float | None]:
        """Pending rows and the accept time (ms) of the oldest pending write."""
        key = self._bookkeeping_keys(entity)[1]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            count, oldest = pipe.execute()
        return count, (oldest[0][1] if oldest else None)

    def counters(self) -> dict:
        raw = self.redis.hgetall(f"{self.prefix}wb:stats")
        return {name: int(value) for name, value in raw.items()}

    def now_ms(self) -> float:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros / 1000
