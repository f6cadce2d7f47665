"""The near cache: rows a gateway process served, kept in its memory, so a repeated read
does not cross the gRPC hop. It is only used while the process is subscribed to
cache-svc's change stream (ChangeWatcher), and every change of a row drops or updates
the row here.

A read that misses takes a reservation first, as Hazelcast's near cache does: a change
of the row that arrives while the read is in flight is recorded on the reservation, and
the row read is stored only if it is at least as new as every change seen meanwhile. So
a read racing a write never leaves the older row behind. Versions only grow, except when
a row is dropped from the cache (a discarded dead letter, Redis' data lost): a drop
removes the row and any reservation, and a lost link to Redis resets the whole stream.

Watermarks tell how far the process has read the stream: applied_through (see heartbeat())
is a version below which every change has been applied here, so a read presenting a
consistency token (a version the client wrote or read) below it may be served from here.
"""

import json
import logging
import threading
import time
from collections import OrderedDict

import grpc

from chinook import metrics
from chinook.entities import get_entity

log = logging.getLogger(__name__)

CLEAN, PENDING, DEAD_LETTER = "clean", "pending", "dead-letter"
# The kinds of change cache-svc publishes (see ChangeBatch in cache.proto) and the state a
# row is in after each; "d" (dropped) has none. "h" is a watermark, not a change of rows.
STATE_AFTER = {"w": PENDING, "v": PENDING, "c": CLEAN, "x": DEAD_LETTER, "p": PENDING, "f": CLEAN}
WATERMARK = "h"
# A read without a consistency token: below every applied_through, 0 included.
NO_TOKEN = -1
# Rows a process' own bulk marks written per turn of the lock, so reads go on meanwhile.
WRITTEN_CHUNK = 1000


class Entry:
    """A row held: its version, its write-back state, and the body a read answers with.
    A row taken from a change's values is rendered into its body at its first read, not
    when the change arrives: under a write-heavy load most such rows are written again
    before anyone reads them, and every process holding the row would render it."""

    __slots__ = ("_body", "_stored", "state", "version")

    def __init__(self, version: int, state: str, body: bytes | None, stored: tuple | None = None):
        # stored: (entity, id, values as stored) to render the body from, when body is None.
        self.version, self.state, self._body, self._stored = version, state, body, stored

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            stored = self._stored
            if stored is None:
                # Rendered meanwhile by another thread, which set the body first.
                return self._body
            entity, row_id, values = stored
            body = self._body = get_entity(entity).row_json(row_id, values).encode()
            self._stored = None
        return body


class Reservation:
    """A read or write in flight for a row, and the newest change of it seen meanwhile."""

    __slots__ = ("state", "version")

    def __init__(self):
        self.version, self.state = 0, None


class NearCache:
    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self._rows: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._enabled = False
        # Until when the stream has proven itself current; reads after that bypass.
        self._trusted_until = 0.0
        # Counted under the lock the operation takes anyway, published in batches.
        self.counts = {"hits": 0, "misses": 0, "evictions": 0, "invalidations": 0}
        # The latest watermark of each shard, of `_shards` in all, since the stream began.
        self._watermarks: dict[int, int] = {}
        self._shards = 0
        self.applied_through = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._rows)

    def enable(self):
        """The subscription is confirmed: from now on every change reaches apply()."""
        with self._lock:
            self._rows.clear()
            self._forget_watermarks()
            self._enabled = True

    def disable(self):
        """No change can be promised any more: forget everything, stop serving."""
        with self._lock:
            self._rows.clear()
            self._forget_watermarks()
            self._enabled = False

    def _forget_watermarks(self):
        self._watermarks, self._shards, self.applied_through = {}, 0, 0

    def trust_until(self, deadline: float):
        self._trusted_until = deadline

    def stale(self, now: float) -> bool:
        return self._enabled and now > self._trusted_until

    def _serving(self) -> bool:
        return self._enabled and time.monotonic() <= self._trusted_until

    def get(self, key, token: int = NO_TOKEN) -> Entry | None:
        """The row, if held; for a read presenting a consistency token, only once every
        change up to the token has been applied here (token < applied_through), or if the
        row is at least as new as the token, as after the process' own write: a row's
        versions only grow, so it is then as new as every write of it the token covers."""
        with self._lock:
            item = self._rows.get(key) if self._serving() else None
            if item.__class__ is Entry and (token < self.applied_through or item.version >= token):
                self._rows.move_to_end(key)
                self.counts["hits"] += 1
                return item
            self.counts["misses"] += 1
            return None

    def reserve(self, key) -> Reservation | None:
        """Before reading or writing a row through cache-svc; None while not serving."""
        with self._lock:
            if not self._serving():
                return None
            reservation = self._rows[key] = Reservation()
            self._rows.move_to_end(key)
            self._evict()
            return reservation

    def fill(self, key, reservation: Reservation | None, version: int, state: str, body: bytes) -> bool:
        """Stores the row read or written under `reservation`, unless a newer change of
        it (or a drop, or a reset) came first. Returns whether it was stored."""
        if reservation is None:
            return False
        with self._lock:
            if self._rows.get(key) is not reservation:
                return False
            if version < reservation.version:
                del self._rows[key]
                return False
            if version == reservation.version and reservation.state is not None:
                state = reservation.state
            self._rows[key] = Entry(version, state, body)
            return True

    def _evict(self):
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)
            self.counts["evictions"] += 1

    def heartbeat(self, shards: list[int], total: int, at_us: int):
        """A watermark: the Redis node holding `shards` (of `total`) ran it at its time at_us.

        Invariant: every change of a row at a version below applied_through, published
        since the stream began (enable(), which empties the cache), has been applied here,
        so no row held here is older than a write at such a version. Why: a row's version is at least the Redis time of the
        script that wrote it (accept.lua's hybrid clock), so a watermark of the row's shard at
        a later time ran after the write, on the same node; a node publishes in the order
        it runs scripts, and the relay and the stream keep that order, so the change came
        first. The least of every shard's latest watermark bounds them all. This rests on a
        node's clock not going back; after a Redis Cluster failover, on the old and the new
        master's clocks agreeing within the watermark interval."""
        with self._lock:
            if not self._enabled:
                return
            if total != self._shards:
                # Another layout (WRITEBACK_SHARDS changed): start over, every shard unheard.
                self._watermarks, self._shards, self.applied_through = {}, total, 0
            for shard in shards:
                if 0 <= shard < total and self._watermarks.get(shard, 0) < at_us:
                    self._watermarks[shard] = at_us
            if len(self._watermarks) == total:
                self.applied_through = min(self._watermarks.values())

    def written(self, entity: str, ids, version: int):
        """What this process wrote itself, before it answers: rows of `entity` (every one
        held here when ids is None) accepted at versions up to `version`. As their changes
        will: older rows leave, and a read in flight may store none older than `version`.
        A bulk gives its newest version for every row, which costs at most a read through
        cache-svc."""
        if ids is None:
            with self._lock:
                ids = [row_id for name, row_id in self._rows if name == entity]
        for start in range(0, len(ids), WRITTEN_CHUNK):
            with self._lock:
                for row_id in ids[start:start + WRITTEN_CHUNK]:
                    key = (entity, row_id)
                    item = self._rows.get(key)
                    if item is None or item.version >= version:
                        continue
                    if item.__class__ is Reservation:
                        item.version, item.state = version, PENDING
                    else:
                        del self._rows[key]
                        self.counts["invalidations"] += 1

    def apply(self, entity: str, kind: str, rows: list):
        """One published change: rows of [id, version] ([id] for a drop; [id, version,
        values as stored] for "v", a write that carries the row's new values)."""
        state = STATE_AFTER.get(kind)
        with self._lock:
            if not self._enabled:
                return
            for row in rows:
                key = (entity, row[0])
                item = self._rows.get(key)
                if item is None:
                    continue
                if state is None:
                    del self._rows[key]
                    self.counts["invalidations"] += 1
                    continue
                version = row[1]
                if item.__class__ is Reservation:
                    if version >= item.version:
                        item.version, item.state = version, state
                elif kind == "v" and item.version < version:
                    # The new value itself: the row stays here, at its new version.
                    self._rows[key] = Entry(version, state, None, (entity, row[0], row[2]))
                    self.counts["invalidations"] += 1
                elif item.version < version or (kind == "f" and item.version != version):
                    # Older than the change; or, for a row loaded from Postgres, not what
                    # the cache holds now.
                    del self._rows[key]
                    self.counts["invalidations"] += 1
                elif item.version == version:
                    item.state = state


class ChangeWatcher:
    """Keeps a NearCache subscribed to cache-svc's change stream: enables it once the
    stream is confirmed, applies every change, and disables it whenever the stream ends,
    has been silent for longer than max_lag_s (cache-svc sends a heartbeat every 0.2 s),
    or delivers a heartbeat sent longer ago than that (the hosts' clocks are taken to
    agree to well under it), then subscribes again."""

    def __init__(self, open_stream, near_cache: NearCache, max_lag_s: float):
        self.open_stream = open_stream
        self.near_cache = near_cache
        self.max_lag_s = max_lag_s
        self._call = None
        self._published = dict.fromkeys(near_cache.counts, 0)
        self._stop = threading.Event()

    def start(self):
        threading.Thread(target=self._run, name="near-cache-watch", daemon=True).start()
        threading.Thread(target=self._watchdog, name="near-cache-watchdog", daemon=True).start()

    def stop(self):
        self._stop.set()
        if self._call is not None:
            self._call.cancel()

    def _run(self):
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._call = self.open_stream()
                reason = "the change stream ended"
                for batch in self._call:
                    if batch.heartbeat_at_ms and time.time() - batch.heartbeat_at_ms / 1000 > self.max_lag_s:
                        # Reading what was sent long ago: changes since may be waiting.
                        reason = f"the change stream lags by more than {self.max_lag_s:g} s"
                        self._call.cancel()
                        break
                    self.near_cache.trust_until(time.monotonic() + self.max_lag_s)
                    if batch.subscribed:
                        self.near_cache.enable()
                        log.info("near cache: subscribed to changes, serving up to %d rows",
                                 self.near_cache.max_rows)
                        backoff = 0.05
                    for text in batch.changes_json:
                        self._apply(text)
            except grpc.RpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            self.near_cache.disable()
            if self._stop.is_set():
                return
            metrics.NEAR_CACHE_RECONNECTS.inc()
            log.warning("near cache: cleared and bypassed (%s); subscribing again in %.2f s", reason, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5)

    def _apply(self, text: str):
        change = json.loads(text)
        if change["k"] == WATERMARK:
            self.near_cache.heartbeat(change["s"], change["n"], change["u"])
            return
        self.near_cache.apply(change["e"], change["k"], change["r"])
        metrics.NEAR_CACHE_INVALIDATION_DELAY.observe(max(0.0, time.time() - change["t"] / 1000))

    def _watchdog(self):
        interval = min(0.25, self.max_lag_s / 4)
        while not self._stop.wait(interval):
            if self.near_cache.stale(time.monotonic()):
                # Nothing heard, not even a heartbeat: the stream may have lost changes.
                self.near_cache.disable()
                if self._call is not None:
                    self._call.cancel()
            self._publish_counts()

    def _publish_counts(self):
        for name, counter in metrics.NEAR_CACHE_COUNTERS.items():
            value = self.near_cache.counts[name]
            if value > self._published[name]:
                counter.inc(value - self._published[name])
                self._published[name] = value
