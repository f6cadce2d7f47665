"""The rows and their write-back bookkeeping in Redis: RowStore, the one interface to them.

Reads, fills from Postgres, accepted writes, claims for flushes, their acknowledgements,
dead letters and the status of pending writes: each step that changes a row and its
bookkeeping is one call of a function of the Lua library (functions.py, lua/), so it is
atomic, made for the rows of one shard at a time (the key layout: keys.py) and sent to
Redis in pipelines (transport.py).
"""

import json
import secrets
from dataclasses import dataclass

import redis

from chinook.entities import get_entity, new_claim_id
from chinook.tracing import LINK_WIDTH, LINKS_PER_ROW

from .functions import LIBRARY
from .keys import KeyLayout, ShardRetired, adopt_layout
from .transport import Transport

META_PREFIX = "_"

# Rows per function call: long enough to amortise the round trip, short enough not to
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
class RowState:
    """A cached row and where its write is: clean, pending (accepted, not claimed by a
    flush yet), in_flight (claimed, not acknowledged yet) or dead_letter, and since when
    (Unix seconds; None where the cache does not know)."""

    row: CachedRow
    state: str
    since: float | None


@dataclass(frozen=True)
class ClaimedBatch:
    """The rows of one entity that one claim of one shard took, as the columnar JSON their
    task carries (chinook.entities.Entity.columns_json's form, built by lua/claim.lua)."""

    rows_json: str
    count: int
    writes: int  # accepted writes these rows cover
    # The span contexts kept of each row's writes (chinook.tracing.split_links), one string
    # a row; empty when no row kept any.
    links: tuple = ()


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


def _interleaved(first: list, second: list) -> list:
    """first[0], second[0], first[1], second[1], ...: pairs as a script's arguments."""
    both = [None] * (2 * len(first))
    both[::2] = first
    both[1::2] = second
    return both


def _encode_patch(fields: dict) -> list:
    """Column/value pairs of a patch; a column set to NULL is sent as NULL (NUL, which
    validation refuses in any value), so lua/accept.lua removes it from the hash."""
    flat = []
    for name, value in fields.items():
        flat += [name, NULL if value is None else str(value)]
    return flat


@dataclass(frozen=True)
class ShardClaim:
    """What one claim of a shard (lua/claim.lua) found: its pending and ready rows, and the rows claimed
    under the claim id `claim`, which their task carries."""

    pending: int
    ready: int
    rows: dict  # entity name to its ClaimedBatch
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
        self.keys = KeyLayout(prefix, shards)
        self.transport = Transport(client, LIBRARY, min_replicas, replica_timeout_ms)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.entities = tuple(entities)
        self.max_pending = max_pending
        self.shards = shards
        # Each shard's pending rows as this process last saw them (accepts and claims
        # report them): the other shards' part of the WRITEBACK_MAX_PENDING check.
        self._shard_pending = [0] * shards
        self.layout_adopted = False
        # Each entity's name and columns, as lua/claim.lua takes them.
        self._claimed_columns = [" ".join([name, *(f"{c.name}:{'i' if c.pg_type == 'int' else 's'}"
                                                   for c in get_entity(name).columns)]) for name in self.entities]
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

    # Layout

    def ensure_layout(self):
        """adopt_layout() until it succeeded once: nothing is written or claimed before."""
        if not self.layout_adopted:
            self.adopt_layout()

    def adopt_layout(self):
        """Makes WRITEBACK_SHARDS the layout of the rows (keys.adopt_layout)."""
        adopt_layout(self.redis, self.keys, self.entities)
        self.layout_adopted = True

    # Reads and fills

    def ping(self):
        self.redis.ping()

    def get(self, entity: str, row_id: int) -> CachedRow | None:
        raw = self.redis.hgetall(self.keys.row_key(entity, row_id))
        return _parse_hash(row_id, raw) if raw else None

    def inspect(self, entity: str, row_id: int, lease_ms: int) -> RowState | None:
        """The row as cached and the state of its write, None if it is not cached.
        lease_ms is the flushes' lease (WRITEBACK_LEASE_MS), which tells when a claimed
        row was claimed."""
        shard = self.keys.shard_of(row_id)
        keys = [self.keys.row_key(entity, row_id), self.keys.due_key(shard, entity), self.keys.pending_key(shard, entity),
                self.keys.dead_key(shard, entity)]
        [(now_ms, flat, due, pending, dead, ttl_ms)] = self.transport.run([(self._inspect, keys, [row_id])])
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
        """(entity, id) rows in one round trip (one per node on a cluster); none for no rows
        (an empty pipeline is a span of its own with tracing on)."""
        if not keys:
            return []
        if len(keys) == 1:
            return [self.get(*keys[0])]
        with self.redis.pipeline(transaction=False) as pipe:
            for entity, row_id in keys:
                pipe.hgetall(self.keys.row_key(entity, row_id))
            found = pipe.execute()
        return [_parse_hash(row_id, raw) if raw else None for (_, row_id), raw in zip(keys, found, strict=False)]

    def _chunked_calls(self, ids: list, size: int, call) -> tuple[list, list]:
        """call(shard, chunk of positions) -> (function, keys, args) for every chunk of
        every shard; returns the calls and their chunks of positions."""
        calls, chunks = [], []
        for shard, positions in self.keys.by_shard(ids).items():
            for start in range(0, len(positions), size):
                chunk = positions[start:start + size]
                calls.append(call(shard, chunk))
                chunks.append(chunk)
        return calls, chunks

    def uncached_ids(self, entity: str, ids: list[int]) -> list[int]:
        calls, _ = self._chunked_calls(ids, CHUNK * 10, lambda shard, chunk: (
            self._uncached, [self.keys.stats_key(shard)], [self.keys.row_prefix(shard, entity), *(ids[i] for i in chunk)]))
        uncached = {int(row_id) for reply in self.transport.run(calls) for row_id in reply}
        return [row_id for row_id in ids if row_id in uncached]

    def begin_fill(self, entity: str, ids: list[int]) -> str:
        """Takes the fill token of each row before reading it from Postgres."""
        token = secrets.token_hex(8)
        calls, _ = self._chunked_calls(ids, CHUNK * 10, lambda shard, chunk: (
            self._begin_fill, [self.keys.stats_key(shard)],
            [self.keys.fill_prefix(shard, entity), token, FILL_TOKEN_TTL_MS, *(ids[i] for i in chunk)]))
        self.transport.run(calls)
        return token

    def fill(self, entity: str, token: str, rows: list[tuple[int, dict, int]], reply: bool = False) -> list:
        """Caches (id, fields, version) rows loaded from Postgres under `token`, where
        nobody cached the row meanwhile. With reply, returns each row as cached now, or
        None where it is not cached."""
        def call(shard, chunk):
            args = [self.keys.row_prefix(shard, entity), self.ttl_s, token, int(reply), self.keys.fill_prefix(shard, entity),
                    self.keys.changes_channel, entity]
            for i in chunk:
                row_id, fields, version = rows[i]
                flat = _encode_fields(fields) + ["_ver", version]
                args += [row_id, len(flat) // 2, *flat]
            return self._fill, [self.keys.stats_key(shard)], args

        calls, chunks = self._chunked_calls([row_id for row_id, _, _ in rows], CHUNK, call)
        cached = [None] * len(rows)
        for chunk, out in zip(chunks, self.transport.run(calls), strict=False):
            for i, raw in zip(chunk, out, strict=False):
                cached[i] = _parse_hash(rows[i][0], _pairs_to_dict(raw)) if raw else None
        return cached

    def merge(self, entity: str, rows: list[tuple[int, dict]]) -> list[CachedRow | None]:
        """Completes partial rows with (id, fields) read from Postgres; returns each row
        as cached now (None where it is not cached)."""
        def call(shard, chunk):
            args = [self.keys.row_prefix(shard, entity)]
            for i in chunk:
                row_id, fields = rows[i]
                flat = _encode_fields(fields)
                args += [row_id, len(flat) // 2, *flat]
            return self._merge, [self.keys.stats_key(shard)], args

        calls, chunks = self._chunked_calls([row_id for row_id, _ in rows], CHUNK, call)
        merged = [None] * len(rows)
        for chunk, out in zip(chunks, self.transport.run(calls), strict=False):
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
            keys = [self.keys.due_key(shard, entity), self.keys.pending_key(shard, entity), self.keys.stats_key(shard),
                    self.keys.dead_key(shard, entity), self.keys.retired_key(shard)]
            keys += [self.keys.pending_key(shard, name) for name in self.entities]
            args = [self.keys.row_prefix(shard, entity), self.max_pending, self.keys.changes_channel, entity, int(reply),
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
        """Each update's reply: its version, or with reply (version, the row as it is now). links,
        while tracing is on: for each update the context of the span that accepted it
        (chinook.tracing.current_link), or None."""
        self.ensure_layout()
        calls, chunks = self._accept_calls(entity, updates, reply, bases, links)
        try:
            replies = self.transport.run(calls, wait=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("RETIRED"):
                raise ShardRetired(
                    f"the rows in Redis are now laid out in another number of shards than WRITEBACK_SHARDS="
                    f"{self.shards}: restart this cache-svc with the current one") from None
            raise
        results = [None] * len(updates)
        for chunk, out in zip(chunks, replies, strict=False):
            *out, shard_pending = out
            self._shard_pending[self.keys.shard_of(updates[chunk[0]][0])] = shard_pending
            for i, result in zip(chunk, zip(out[::2], out[1::2], strict=True) if reply else out, strict=True):
                results[i] = result
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
        versions = self._run_accept(entity, updates, False, bases or {}, links)
        if -2 in versions:
            raise Backpressure(
                f"{self.pending_total()} rows are waiting to be written to Postgres, the limit is "
                f"{self.max_pending} (WRITEBACK_MAX_PENDING); retry shortly"
            )
        return versions

    # Flushing

    def claim(self, delay_ms: int, batch_size: int, lease_ms: int, shards=None,
              claim: str | None = None) -> list[ShardClaim]:
        """Claims what is due in each of `shards` (all by default), as lua/claim.lua does, under
        `claim`, or a fresh claim id."""
        self.ensure_layout()
        shards = range(self.shards) if shards is None else shards
        claim = claim or new_claim_id()
        calls = [(self._claim, [key for name in self.entities for key in (self.keys.due_key(shard, name),
                                                                           self.keys.pending_key(shard, name))],
                  [self.keys.shard_prefix(shard), delay_ms, batch_size, lease_ms, self.keys.changes_channel, claim,
                   *self._claimed_columns])
                 for shard in shards]
        claims = []
        for shard, (pending, ready, *claimed) in zip(shards, self.transport.run(calls), strict=False):
            self._shard_pending[shard] = pending
            rows = {name: ClaimedBatch(rows_json, count, writes, tuple(links))
                    for name, rows_json, count, writes, links in zip(*[iter(claimed)] * 5, strict=True)}
            claims.append(ShardClaim(pending, ready, rows, claim))
        return claims

    def release(self, entity: str, ids: list[int]):
        """Makes claimed rows claimable again at once (their task was never published)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for shard, positions in self.keys.by_shard(ids).items():
                pipe.zadd(self.keys.due_key(shard, entity), {str(ids[i]): 0 for i in positions}, xx=True)
            pipe.execute()

    def ack(self, entity: str, ids: list[int], versions: list[int], claim: str) -> Acknowledged:
        """Marks the rows `ids`, flushed at `versions` under `claim`, clean, as lua/ack.lua does."""
        calls = []
        for shard, positions in self.keys.by_shard(ids).items():
            args = [self.keys.row_prefix(shard, entity), self.ttl_s, self.keys.changes_channel, entity, claim,
                    *_interleaved([ids[i] for i in positions], [versions[i] for i in positions])]
            calls.append((self._ack, [self.keys.due_key(shard, entity), self.keys.pending_key(shard, entity), self.keys.stats_key(shard)],
                          args))
        cleaned, lags, flushed, outdated = 0, [], 0, []
        for shard_cleaned, shard_lags, shard_flushed, shard_outdated in (self.transport.run(calls) if calls else []):
            cleaned += shard_cleaned
            lags += shard_lags
            flushed += shard_flushed
            outdated += [int(row_id) for row_id in shard_outdated]
        return Acknowledged(cleaned, lags, flushed, outdated)

    def drop_outdated(self, entity: str, stored: dict[int, int]) -> int:
        """Drops the clean rows cached at an older version than `stored` (id to the version
        Postgres holds) gives; returns how many."""
        ids = list(stored)
        calls = [(self._drop_outdated, [self.keys.stats_key(shard)],
                  [self.keys.row_prefix(shard, entity), self.keys.changes_channel, entity,
                   *_interleaved([ids[i] for i in positions], [stored[ids[i]] for i in positions])])
                 for shard, positions in self.keys.by_shard(ids).items()]
        return sum(self.transport.run(calls)) if calls else 0

    def expedite(self) -> int:
        """Makes every waiting dirty row claimable now; returns how many."""
        return sum(self.transport.run([(self._expedite, [self.keys.due_key(shard, name)], [])
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
        calls = [(self._status, [self.keys.pending_key(shard, name) for name in self.entities] +
                  [self.keys.dead_key(shard, name) for name in self.entities], []) for shard in range(self.shards)]
        statuses = []
        for shard, (*flat, dead) in enumerate(self.transport.run(calls)):
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
                pipe.hgetall(self.keys.stats_key(shard))
            totals: dict[str, int] = {}
            for raw in pipe.execute():
                for name, value in raw.items():
                    totals[name] = totals.get(name, 0) + int(value)
        return totals

    def dead_letter(self, entity: str, failures: list[tuple[int, int, str]], claim: str) -> int:
        """Dead-letters (id, version, error) rows in flight under `claim` at that version."""
        calls = []
        for shard, positions in self.keys.by_shard([row_id for row_id, _, _ in failures]).items():
            args = [self.keys.row_prefix(shard, entity), self.keys.changes_channel, entity, claim]
            for i in positions:
                args += list(failures[i])
            calls.append((self._dead_letter, [self.keys.due_key(shard, entity), self.keys.pending_key(shard, entity),
                                              self.keys.dead_key(shard, entity)], args))
        return sum(self.transport.run(calls)) if calls else 0

    def dead_letters(self, entity: str) -> list[DeadLetter]:
        with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(self.keys.dead_key(shard, entity))
            found = pipe.execute()
        return sorted((_parse_dead_letter(entity, row_id, raw) for entries in found for row_id, raw in entries.items()),
                      key=lambda d: d.failed_at)

    def resolve_dead_letter(self, entity: str, row_id: int, action: str) -> DeadLetter | None:
        """action 'retry' schedules the write again, 'discard' drops the cached row."""
        shard = self.keys.shard_of(row_id)
        [raw] = self.transport.run([(
            self._resolve_dead_letter,
            [self.keys.due_key(shard, entity), self.keys.pending_key(shard, entity), self.keys.dead_key(shard, entity)],
            [self.keys.row_prefix(shard, entity), row_id, action, self.keys.changes_channel, entity])])
        return _parse_dead_letter(entity, row_id, raw) if raw else None

    def heartbeat(self) -> list[int]:
        """Publishes a watermark of every shard (lua/heartbeat.lua), from the node holding it: one
        call on a single Redis, one per primary on a cluster. Returns each call's Redis time."""
        by_node: dict[str, list[int]] = {}
        for shard in range(self.shards):
            by_node.setdefault(self.transport.node_name(self.keys.stats_key(shard)), []).append(shard)
        return [int(now_us) for now_us in self.transport.run([
            (self._heartbeat, [self.keys.stats_key(shards[0])], [self.keys.changes_channel, self.shards, *shards])
            for shards in by_node.values()])]

    def now_ms(self) -> float:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros / 1000
