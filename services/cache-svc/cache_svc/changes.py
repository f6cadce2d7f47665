"""Relays the row changes that every cache-svc replica's Lua scripts publish in Redis to
the gateway processes subscribed here (CacheService.WatchChanges), for their near caches.

One thread holds one pub/sub connection. It forwards what Redis sends in batches (all
that is waiting at once), and proves the path from Redis is caught up with a PING every
HEARTBEAT_S: Redis answers it on the same connection after every message published
before it, so each answer is forwarded as a heartbeat (an empty batch). A subscriber can
only trust its near cache while it gets every change: whenever that is no longer sure
(the link to Redis broke or lags, a subscriber fell behind, cache-svc stops), the
subscription ends, and the subscriber drops what it holds.
"""

import logging
import queue
import threading
import time

import redis

from chinook import tracing

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.2
# How often each cache-svc publishes the shards' watermarks through Redis (HeartbeatPublisher):
# a read presenting a consistency token waits no longer than this to be served from a near cache.
WATERMARK_INTERVAL_S = 0.1
# How long changes are gathered before they are sent on together.
LINGER_S = 0.01
# The most forwarded as one batch, so a burst (a bulk publishes a message per 1,000
# rows) does not become one huge message each subscriber must hold at once.
MAX_BATCH_BYTES = 256 * 1024
# Batches waiting for one subscriber; beyond, it has fallen behind.
MAX_QUEUED = 2000
# The bytes of changes waiting for one subscriber; beyond, it has fallen behind too. Every
# subscriber's queue holds the same batch objects, so all of them together hold little
# more than the longest one. A bulk changes some 167,000 rows/s (docs/scaling.md), each
# with about 100 bytes of messages: 64 MiB is seconds of changes, far past the lag
# (NEAR_CACHE_MAX_LAG_MS) a subscriber is allowed when it reads.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# Each subscription holds a thread of the gRPC server for its lifetime.
MAX_SUBSCRIBERS = 32


# Stands for a heartbeat in a subscriber's queue; sent with the time it was queued.
HEARTBEAT: list = []


class Unavailable(Exception):
    """No change can be promised to a new subscriber now; the message says why."""


class Subscription:
    """The batches for one subscriber, in order; iterating ends when it is closed."""

    _END = object()

    def __init__(self, relay: "ChangeRelay"):
        self._relay = relay
        self._queue = queue.SimpleQueue()
        self._bytes_lock = threading.Lock()
        self._queued_bytes = 0
        self.end_reason = ""

    def put(self, batch: list[str], size: int):
        with self._bytes_lock:
            self._queued_bytes += size
        self._queue.put((time.monotonic(), time.time(), batch, size))

    def backlog(self) -> int:
        return self._queue.qsize()

    def queued_bytes(self) -> int:
        return self._queued_bytes

    def end(self, reason: str):
        if not self.end_reason:
            self.end_reason = reason
            self._queue.put((0.0, 0.0, self._END, 0))

    def close(self):
        """The subscriber went away."""
        self._relay.unsubscribe(self)
        self.end("closed")

    def __iter__(self):
        """(batch, Unix time it was queued at) pairs; an empty batch is a heartbeat."""
        while True:
            queued_at, queued_at_unix, batch, size = self._queue.get()
            if batch is self._END:
                return
            with self._bytes_lock:
                self._queued_bytes -= size
            if time.monotonic() - queued_at > self._relay.max_lag_s:
                self.end(f"subscriber fell behind by more than {self._relay.max_lag_s:g} s")
                self._relay.unsubscribe(self)
                return
            yield batch, queued_at_unix


class ChangeRelay:
    def __init__(self, connect, channel: str, max_lag_s: float, max_queued_bytes: int = MAX_QUEUED_BYTES):
        # connect() opens a client without decode_responses: redis-py's pub/sub reads PING
        # answers right only from bytes. Each link to Redis takes a new one, so a link
        # lost with a cluster node is made again on another.
        self.connect = connect
        self.channel = channel
        self.max_lag_s = max_lag_s
        self.max_queued_bytes = max_queued_bytes
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._linked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run_untraced, name="change-relay", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._end_all("cache-svc is stopping")
        self._thread.join(5)

    def subscribe(self) -> Subscription:
        with self._lock:
            if not self._linked:
                raise Unavailable("cache-svc is not subscribed to changes in Redis yet")
            if len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise Unavailable(f"cache-svc serves {MAX_SUBSCRIBERS} change subscribers at most")
            subscription = Subscription(self)
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription):
        with self._lock:
            self._subscribers.discard(subscription)

    def _broadcast(self, batch: list[str], size: int = 0):
        """size: the batch's bytes as Redis sent them."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            if subscription.backlog() >= MAX_QUEUED:
                subscription.end(f"subscriber fell behind by {MAX_QUEUED} batches")
            elif subscription.queued_bytes() + size > self.max_queued_bytes:
                subscription.end(f"subscriber fell behind by more than {self.max_queued_bytes} bytes")
            else:
                subscription.put(batch, size)
                continue
            self.unsubscribe(subscription)

    def _end_all(self, reason: str):
        with self._lock:
            subscribers, self._subscribers = self._subscribers, set()
            self._linked = False
        for subscription in subscribers:
            subscription.end(reason)

    def _run_untraced(self):
        # Its reads and pings go on for ever: spans of them would drown the requests'.
        with tracing.untraced():
            self._run()

    def _run(self):
        backoff = 0.1
        while not self._stop.is_set():
            client = self.connect()
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self._relay(pubsub)
            except (redis.RedisError, OSError, Unavailable) as exc:
                self._end_all(f"lost the link to Redis: {exc}")
                log.warning("change relay: %s; subscribers reset, retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5)
            else:
                backoff = 0.1
            finally:
                try:
                    pubsub.close()
                    client.close()
                except redis.RedisError:
                    pass

    def _relay(self, pubsub):
        ping_sent_at = None
        next_ping = 0.0
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=HEARTBEAT_S / 2)
            batch, size, heartbeat = [], 0, False
            # What arrives within the linger travels as one batch: each message a gateway
            # process receives costs it far more than the changes in it.
            gather_until = time.monotonic() + LINGER_S
            while message is not None:
                kind = message["type"]
                if kind == "message":
                    batch.append(message["data"].decode())
                    size += len(message["data"])
                elif kind == "pong":
                    heartbeat, ping_sent_at = True, None
                elif kind == "subscribe":
                    with self._lock:
                        self._linked = True
                    log.info("change relay: subscribed to %s", self.channel)
                if size >= MAX_BATCH_BYTES:
                    self._broadcast(batch, size)
                    batch, size = [], 0
                remaining = gather_until - time.monotonic()
                if remaining <= 0:
                    break
                message = pubsub.get_message(timeout=remaining)
            if batch:
                self._broadcast(batch, size)
            if heartbeat:
                self._broadcast(HEARTBEAT)
            now = time.monotonic()
            if ping_sent_at is not None and now - ping_sent_at > self.max_lag_s:
                raise Unavailable(f"Redis did not answer a PING within {self.max_lag_s:g} s")
            if ping_sent_at is None and now >= next_ping:
                pubsub.ping(b"heartbeat")
                ping_sent_at, next_ping = now, now + HEARTBEAT_S


class HeartbeatPublisher:
    """Publishes every shard's watermark through Redis every WATERMARK_INTERVAL_S
    (RowStore.heartbeat): on the changes channel, behind every change published before it,
    it tells a gateway process up to which version it has read every change (see
    NearCache.applied_through). Every cache-svc replica runs one; the gateways hear all of
    them, which only keeps the watermarks fresher."""

    def __init__(self, store, interval_s: float = WATERMARK_INTERVAL_S):
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watermarks", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                # Ten calls a second, for ever: spans of them would drown the requests'.
                with tracing.untraced():
                    self.store.heartbeat()
            except Exception as exc:  # noqa: BLE001 - the thread outlives any failure: the next round tries again
                if not failing:
                    log.warning("cannot publish the near caches' watermarks (%s: %s); reads presenting a "
                                "consistency token go through cache-svc until they are published again",
                                type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("publishing the near caches' watermarks again")
                failing = False
