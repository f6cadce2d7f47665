"""cache-svc's change relay on a real Redis: what one subscriber may pile up is bounded in
bytes, and a subscriber past the bound is ended as one that falls behind is, while the
others go on."""

import queue
import threading
import time
import uuid

import pytest
import redis

from cache_svc.changes import ChangeRelay, Unavailable
from chinook.config import load_settings

MESSAGE_BYTES = 16 * 1024
BOUND = 4 * MESSAGE_BYTES


@pytest.fixture
def channel():
    return f"chinook-relay-test-{uuid.uuid4().hex[:10]}:changes"


@pytest.fixture
def relay(channel):
    url = load_settings().redis_url
    relay = ChangeRelay(lambda: redis.Redis.from_url(url), channel, max_lag_s=30, max_queued_bytes=BOUND)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def publisher():
    client = redis.Redis.from_url(load_settings().redis_url)
    yield client
    client.close()


def subscribe(relay: ChangeRelay, deadline_s: float = 30):
    """Subscribes once the relay is linked to Redis."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return relay.subscribe()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_changes(subscription) -> queue.Queue:
    """Reads the subscription in a thread, as the gRPC stream does; changes, not heartbeats,
    come out of the returned queue."""
    changes = queue.Queue()

    def read():
        for batch, _ in subscription:
            for change in batch:
                changes.put(change)

    threading.Thread(target=read, daemon=True).start()
    return changes


def test_a_subscriber_that_would_hold_more_than_the_bound_is_ended_and_the_others_go_on(relay, publisher, channel):
    slow, reader = subscribe(relay), subscribe(relay)
    received = read_changes(reader)
    for number in range(6):
        message = f"{number:02d}".ljust(MESSAGE_BYTES, "x")
        assert publisher.publish(channel, message) == 1
        # One message at a time, each read before the next: the reader never lags.
        assert received.get(timeout=30) == message
    assert slow.end_reason == f"subscriber fell behind by more than {BOUND} bytes"
    # It holds what came before the bound, no more; its stream ends after those.
    assert slow.queued_bytes() == BOUND
    assert [batch for batch, _ in slow if batch] == [[f"{n:02d}".ljust(MESSAGE_BYTES, "x")] for n in range(4)]
    assert reader.end_reason == ""
    assert publisher.publish(channel, "after") == 1
    assert received.get(timeout=30) == "after"


def test_what_a_subscriber_reads_no_longer_counts_against_it(relay, publisher, channel):
    reader = subscribe(relay)
    received = read_changes(reader)
    for number in range(3 * BOUND // MESSAGE_BYTES):
        message = f"{number:02d}".ljust(MESSAGE_BYTES, "y")
        publisher.publish(channel, message)
        assert received.get(timeout=30) == message
    assert reader.end_reason == "" and reader.queued_bytes() == 0
