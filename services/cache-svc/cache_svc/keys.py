"""Where cache-svc keeps things in Redis: the key layout, its shards, and the switch of
the rows from one number of shards to another.

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
  writes only those. A read completes it from Postgres first (lua/merge.lua).
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
  the row (see lua/ack.lua).
- `_links` in a dirty row's hash, only while tracing is on: the span contexts of its
  latest accepted writes since it was last claimed (chinook.tracing.LINKS_PER_ROW of
  them, LINK_WIDTH characters each), which its flush links back to.
- `s wb:stats`, a hash of counters; the shards' counters add up.
- `s wb:retired`: set while, and once, the shard's layout is replaced by another number
  of shards (see adopt_layout); a write into a retired shard is refused.
- `p wb:layout`: the number of shards the rows are laid out in.
- `p changes`, a pub/sub channel: each script that changes cached rows publishes what
  it changed (see CacheService.WatchChanges), in the same atomic step, so subscribers
  see changes in the order Redis applied them; lua/heartbeat.lua adds each shard's
  watermarks.
"""


class LayoutError(Exception):
    """Rows are pending under another number of shards than WRITEBACK_SHARDS; the
    message says how to change it."""


class ShardRetired(Exception):
    """The shard layout this process writes in was replaced by another process' one."""


class KeyLayout:
    """The names of the keys and of the changes channel under `prefix`, with the rows in
    `shards` shards."""

    def __init__(self, prefix: str, shards: int):
        self.prefix = prefix
        self.shards = shards

    def shard_of(self, row_id: int) -> int:
        return int(row_id) % self.shards

    def by_shard(self, ids) -> dict[int, list[int]]:
        """The positions of `ids` grouped by shard, each group in the order given."""
        groups: dict[int, list[int]] = {}
        shards = self.shards
        for position, row_id in enumerate(ids):
            groups.setdefault(int(row_id) % shards, []).append(position)
        return groups

    def shard_prefix(self, shard: int, shards: int | None = None) -> str:
        return f"{self.prefix}{{{shard}/{shards or self.shards}}}:"

    def row_key(self, entity: str, row_id: int) -> str:
        return f"{self.row_prefix(self.shard_of(row_id), entity)}{row_id}"

    def row_prefix(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}{entity}:"

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}changes"

    @property
    def layout_key(self) -> str:
        return f"{self.prefix}wb:layout"

    def unsharded_pending_key(self, entity: str) -> str:
        """Where rows pending from before shards existed wait."""
        return f"{self.prefix}wb:pending:{entity}"

    def due_key(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}wb:due:{entity}"

    def pending_key(self, shard: int, entity: str, shards: int | None = None) -> str:
        return f"{self.shard_prefix(shard, shards)}wb:pending:{entity}"

    def dead_key(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}wb:dead:{entity}"

    def fill_prefix(self, shard: int, entity: str) -> str:
        return f"{self.shard_prefix(shard)}fill:{entity}:"

    def stats_key(self, shard: int) -> str:
        return f"{self.shard_prefix(shard)}wb:stats"

    def retired_key(self, shard: int, shards: int | None = None) -> str:
        return f"{self.shard_prefix(shard, shards)}wb:retired"


def adopt_layout(client, keys: KeyLayout, entities):
    """Makes `keys.shards` (WRITEBACK_SHARDS) the layout of the rows, at start. A Redis
    without one takes it; one laid out in another number of shards is switched only if
    nothing is pending there: its shards are retired first (a process still writing in
    them is refused from then on), then counted. Raises LayoutError otherwise."""
    for entity in entities:
        legacy = client.zcard(keys.unsharded_pending_key(entity))
        if legacy:
            raise LayoutError(
                f"{legacy} {entity} rows wait in Redis in the layout of a version without shards "
                f"(key {keys.unsharded_pending_key(entity)}): run that version until `POST /write-back/flush` "
                "reports nothing pending, then start this one")
    client.set(keys.layout_key, keys.shards, nx=True)
    current = int(client.get(keys.layout_key))
    if current != keys.shards:
        old = range(current)
        for shard in old:
            client.set(keys.retired_key(shard, current), 1)
        pending = sum(client.zcard(keys.pending_key(shard, entity, current)) for shard in old for entity in entities)
        if pending:
            client.delete(*(keys.retired_key(shard, current) for shard in old))
            raise LayoutError(
                f"WRITEBACK_SHARDS={keys.shards}, but {pending} rows are pending in Redis under "
                f"WRITEBACK_SHARDS={current}: keep {current} until `POST /write-back/flush` reports nothing "
                "pending (stop the writers first), then change it")
        client.set(keys.layout_key, keys.shards)
    client.delete(*(keys.retired_key(shard) for shard in range(keys.shards)))
