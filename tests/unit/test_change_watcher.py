"""The gateway's ChangeWatcher over a stand-in stream: it serves only while subscribed
and current, and drops everything when the stream ends, goes silent or lags."""

import json
import queue
import threading
import time

from chinook.cache.v1 import cache_pb2
from gateway.near_cache import CLEAN, ChangeWatcher, NearCache

KEY = ("album", 1)


class Stream:
    """Yields the batches put into it, until cancelled."""

    def __init__(self, batches):
        self.queue = queue.Queue()
        for batch in batches:
            self.queue.put(batch)
        self.cancelled = threading.Event()

    def __iter__(self):
        while not self.cancelled.is_set():
            try:
                yield self.queue.get(timeout=0.01)
            except queue.Empty:
                pass

    def cancel(self):
        self.cancelled.set()


def change(kind, rows):
    return json.dumps({"e": "album", "k": kind, "t": int(time.time() * 1000), "r": rows})


def wait_for(check, timeout_s=5):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_serves_once_subscribed_and_applies_changes():
    near = NearCache(10)
    holder = {}

    def open_stream():
        holder["stream"] = Stream([cache_pb2.ChangeBatch(subscribed=True)])
        return holder["stream"]

    watcher = ChangeWatcher(open_stream, near, max_lag_s=5)
    watcher.start()
    try:
        wait_for(lambda: near.enabled)
        near.fill(KEY, near.reserve(KEY), 3, CLEAN, b"row")
        assert near.get(KEY) is not None
        holder["stream"].queue.put(cache_pb2.ChangeBatch(changes_json=[change("w", [[1, 4]])]))
        wait_for(lambda: near.get(KEY) is None)
        assert near.counts["invalidations"] == 1 and near.enabled
    finally:
        watcher.stop()


def test_a_stale_heartbeat_clears_the_near_cache_and_resubscribes():
    near = NearCache(10)
    opened = []

    def open_stream():
        batches = [cache_pb2.ChangeBatch(subscribed=True)]
        if not opened:
            # The first stream delivers a heartbeat sent 10 s ago: it reads far behind.
            batches.append(cache_pb2.ChangeBatch(heartbeat_at_ms=int((time.time() - 10) * 1000)))
        opened.append(Stream(batches))
        return opened[-1]

    watcher = ChangeWatcher(open_stream, near, max_lag_s=1)
    watcher.start()
    try:
        wait_for(lambda: len(opened) >= 2 and near.enabled)
        assert opened[0].cancelled.is_set()
    finally:
        watcher.stop()


def test_a_silent_stream_stops_serving_at_once_and_is_dropped():
    near = NearCache(10)
    opened = []

    def open_stream():
        opened.append(Stream([cache_pb2.ChangeBatch(subscribed=True)]))
        return opened[-1]

    watcher = ChangeWatcher(open_stream, near, max_lag_s=0.3)
    watcher.start()
    try:
        wait_for(lambda: near.enabled)
        near.fill(KEY, near.reserve(KEY), 3, CLEAN, b"row")
        time.sleep(0.35)
        # Nothing heard for longer than the bound: not served, even before the watchdog acts.
        assert near.get(KEY) is None
        wait_for(lambda: opened[0].cancelled.is_set())
    finally:
        watcher.stop()


def watermark(shards, total, at_us):
    return json.dumps({"k": "h", "s": shards, "n": total, "u": at_us})


def test_watermarks_in_the_stream_move_applied_through_and_a_new_stream_starts_from_none():
    near = NearCache(10)
    opened = []

    def open_stream():
        batches = [cache_pb2.ChangeBatch(subscribed=True)]
        if not opened:
            batches.append(cache_pb2.ChangeBatch(changes_json=[watermark([0], 2, 500), watermark([1], 2, 700)]))
        opened.append(Stream(batches))
        return opened[-1]

    watcher = ChangeWatcher(open_stream, near, max_lag_s=5)
    watcher.start()
    try:
        wait_for(lambda: near.applied_through == 500)
        opened[0].queue.put(cache_pb2.ChangeBatch(changes_json=[change("w", [[1, 4]]), watermark([0], 2, 900)]))
        wait_for(lambda: near.applied_through == 700)
        opened[0].cancel()
        wait_for(lambda: len(opened) == 2 and near.enabled)
        assert near.applied_through == 0
    finally:
        watcher.stop()
