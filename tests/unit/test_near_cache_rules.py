"""The near cache's rules for races between reads, writes and published changes.

The property test plays a row's history: writes at growing versions, each published in
order, and reads through the near cache that reserve, read what the cache holds at some
moment, and fill later, with the changes arriving at any point in between. Whatever the
interleaving, once every change has arrived the near cache holds the latest version or
nothing, and it never serves a version older than the changes it has already seen.

The second one plays two Redis nodes, each with its clock, its shard and its row, their
watermarks and a client's consistency token: a read presenting the token never gets a
version older than a write the token covers, and a read without one never gets a version
older than the process' own writes.
"""

import json
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.near_cache import CLEAN, DEAD_LETTER, NO_TOKEN, PENDING, Entry, NearCache

KEY = ("album", 7)


def serving(max_rows: int = 100) -> NearCache:
    near = NearCache(max_rows)
    near.enable()
    near.trust_until(time.monotonic() + 3600)
    return near


def test_a_read_stores_its_row_and_serves_it_next_time():
    near = serving()
    assert near.get(KEY) is None
    reservation = near.reserve(KEY)
    assert near.fill(KEY, reservation, 5, CLEAN, b'{"title": "a"}')
    entry = near.get(KEY)
    assert (entry.version, entry.state, entry.body) == (5, CLEAN, b'{"title": "a"}')
    assert near.counts["hits"] == 1 and near.counts["misses"] == 1


def test_a_change_during_the_read_cancels_an_older_fill():
    near = serving()
    reservation = near.reserve(KEY)
    near.apply("album", "w", [[7, 6]])
    assert not near.fill(KEY, reservation, 5, CLEAN, b"old")
    assert near.get(KEY) is None


def test_a_change_older_than_the_read_does_not_cancel_it():
    near = serving()
    reservation = near.reserve(KEY)
    near.apply("album", "w", [[7, 4]])
    assert near.fill(KEY, reservation, 5, PENDING, b"new")
    assert near.get(KEY).version == 5


def test_a_state_change_at_the_read_version_wins_over_the_state_read():
    near = serving()
    reservation = near.reserve(KEY)
    near.apply("album", "c", [[7, 5]])
    assert near.fill(KEY, reservation, 5, PENDING, b"row")
    assert near.get(KEY).state == CLEAN


def test_a_drop_during_the_read_cancels_the_fill():
    near = serving()
    reservation = near.reserve(KEY)
    near.apply("album", "d", [[7]])
    assert not near.fill(KEY, reservation, 9, DEAD_LETTER, b"refused value")
    assert near.get(KEY) is None


def test_changes_drop_older_rows_and_update_the_state_of_the_same_version():
    near = serving()
    near.fill(KEY, near.reserve(KEY), 5, PENDING, b"row")
    near.apply("album", "w", [[7, 4]])
    assert near.get(KEY).version == 5
    near.apply("album", "x", [[7, 5]])
    assert near.get(KEY).state == DEAD_LETTER
    near.apply("album", "p", [[7, 5]])
    assert near.get(KEY).state == PENDING
    near.apply("artist", "w", [[7, 9]])
    assert near.get(KEY) is not None
    near.apply("album", "w", [[7, 6]])
    assert near.get(KEY) is None
    assert near.counts["invalidations"] == 1


def test_a_row_loaded_from_postgres_at_another_version_drops_the_near_row():
    near = serving()
    near.fill(KEY, near.reserve(KEY), 5, CLEAN, b"row")
    near.apply("album", "f", [[7, 5]])
    assert near.get(KEY) is not None
    near.apply("album", "f", [[7, 3]])
    assert near.get(KEY) is None


def test_least_recently_used_rows_are_evicted():
    near = serving(max_rows=2)
    for row_id in (1, 2):
        near.fill(("album", row_id), near.reserve(("album", row_id)), 1, CLEAN, b"")
    near.get(("album", 1))
    near.fill(("album", 3), near.reserve(("album", 3)), 1, CLEAN, b"")
    assert near.get(("album", 2)) is None and near.get(("album", 1)) and near.get(("album", 3))
    assert len(near) == 2 and near.counts["evictions"] == 1


def test_nothing_is_served_or_stored_unless_subscribed_and_heard_from_lately():
    near = NearCache(100)
    assert near.reserve(KEY) is None and not near.fill(KEY, None, 1, CLEAN, b"")
    near.enable()
    near.trust_until(time.monotonic() + 3600)
    near.fill(KEY, near.reserve(KEY), 1, CLEAN, b"")
    near.trust_until(time.monotonic() - 1)
    assert near.get(KEY) is None and near.reserve(KEY) is None
    assert near.stale(time.monotonic())
    near.disable()
    assert len(near) == 0 and not near.enabled


def test_a_reset_cancels_reads_in_flight():
    near = serving()
    reservation = near.reserve(KEY)
    near.disable()
    near.enable()
    near.trust_until(time.monotonic() + 3600)
    assert not near.fill(KEY, reservation, 5, CLEAN, b"read before the reset")


# Steps of the property test: ("write",) makes a new version in the cache and queues its
# change; ("deliver",) delivers the oldest queued change; ("reserve", r) starts read r;
# ("read", r) makes read r see the cache's current version; ("fill", r) ends it.
steps = st.lists(st.one_of(
    st.just(("write",)), st.just(("deliver",)),
    st.tuples(st.sampled_from(["reserve", "read", "fill"]), st.integers(0, 1)),
), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(steps)
def test_no_interleaving_leaves_a_stale_row_behind(plan):
    near = serving()
    version, queued, delivered = 1, [], 0
    reads = {}  # read -> [reservation, version read or None]
    for step in plan:
        if step[0] == "write":
            version += 1
            queued.append(version)
        elif step[0] == "deliver" and queued:
            delivered = queued.pop(0)
            near.apply("album", "w", [[7, delivered]])
        elif step[0] == "reserve":
            reads[step[1]] = [near.reserve(KEY), None]
        elif step[0] == "read" and step[1] in reads and reads[step[1]][1] is None:
            reads[step[1]][1] = version
        elif step[0] == "fill" and step[1] in reads and reads[step[1]][1] is not None:
            reservation, seen = reads.pop(step[1])
            near.fill(KEY, reservation, seen, PENDING, b"")
        entry = near.get(KEY)
        assert entry is None or entry.version >= delivered, (entry.version, delivered)
    for change in queued:
        near.apply("album", "w", [[7, change]])
    entry = near.get(KEY)
    assert entry is None or entry.version == version


def test_a_write_that_carries_its_values_updates_the_row_in_place():
    near = serving()
    near.fill(KEY, near.reserve(KEY), 5, CLEAN, b'{"album_id": 7, "title": "old", "artist_id": 1}')
    near.apply("album", "v", [[7, 6, {"title": "new", "artist_id": "2"}], [8, 6, {"title": "elsewhere"}]])
    entry = near.get(KEY)
    assert (entry.version, entry.state) == (6, PENDING)
    assert json.loads(entry.body) == {"album_id": 7, "title": "new", "artist_id": 2}
    assert near.get(("album", 8)) is None and near.counts["invalidations"] == 1
    near.apply("album", "v", [[7, 4, {"title": "older"}]])
    assert near.get(KEY).version == 6


def test_a_row_taken_from_a_change_is_rendered_once_whichever_threads_read_it_first():
    bodies = []
    for _ in range(200):
        entry = Entry(6, PENDING, None, ("album", 7, {"title": "new", "artist_id": "2"}))
        readers = [threading.Thread(target=lambda entry=entry: bodies.append(entry.body)) for _ in range(4)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    assert len(bodies) == 800 and set(bodies) == {b'{"album_id": 7, "title": "new", "artist_id": 2}'}


def test_a_token_is_served_here_only_past_every_shards_watermark_or_by_a_row_as_new():
    near = serving()
    near.fill(KEY, near.reserve(KEY), 5, CLEAN, b"row")
    assert near.applied_through == 0 and near.get(KEY, 6) is None and near.get(KEY) is not None
    assert near.get(KEY, 5) is not None, "the row is as new as the token"
    near.heartbeat([0, 1], 3, 100)
    assert near.applied_through == 0, "shard 2 not heard yet"
    near.heartbeat([2], 3, 90)
    assert near.applied_through == 90
    assert near.get(KEY, 89) is not None and near.get(KEY, 90) is None
    near.heartbeat([2], 3, 80)
    assert near.applied_through == 90, "an older watermark takes nothing back"
    near.heartbeat([2], 3, 120)
    assert near.applied_through == 100
    near.heartbeat([0], 4, 200)
    assert near.applied_through == 0, "another number of shards starts over"
    near.disable()
    near.enable()
    near.trust_until(time.monotonic() + 3600)
    assert near.applied_through == 0


def test_a_read_past_the_watermark_counts_as_a_miss():
    near = serving()
    near.fill(KEY, near.reserve(KEY), 5, CLEAN, b"row")
    near.heartbeat([0], 1, 10)
    assert near.get(KEY, 10) is None and near.get(KEY, 9) is not None
    assert (near.counts["hits"], near.counts["misses"]) == (1, 1)


def test_a_process_own_writes_leave_older_rows_and_floor_reads_in_flight():
    near = serving()
    for row_id in (1, 2, 3):
        near.fill(("album", row_id), near.reserve(("album", row_id)), 10 * row_id, CLEAN, b"")
    racing = near.reserve(("album", 4))
    near.fill(("artist", 1), near.reserve(("artist", 1)), 5, CLEAN, b"")
    near.written("album", [1, 2, 3, 4], 20)
    assert near.get(("album", 1)) is None, "older than the bulk"
    assert near.get(("album", 2)).state == CLEAN, "as new as the bulk: kept as it is"
    assert near.get(("album", 3)).version == 30, "newer than the bulk: kept"
    assert not near.fill(("album", 4), racing, 19, CLEAN, b"read before the bulk")
    assert near.get(("artist", 1)) is not None
    near.written("album", None, 40)
    assert near.get(("album", 2)) is None and near.get(("album", 3)) is None
    assert near.get(("artist", 1)) is not None and near.counts["invalidations"] == 3


def test_a_flush_heard_before_the_writer_marks_its_row_keeps_it_clean():
    near = serving()
    reservation = near.reserve(KEY)
    near.apply("album", "c", [[7, 5]])
    near.written("album", [7], 5)
    assert near.fill(KEY, reservation, 5, PENDING, b"row")
    assert near.get(KEY).state == CLEAN


# Steps of the second property test, on two Redis nodes (node n holds shard n and row
# ROWS[n], ids of n mod 2), whose clocks move on a little each step: ("tick", n) moves
# node n's further; ("write", n, own) writes its row there and queues the change, own when
# this process wrote it (and marks it written before answering, as the gateway does);
# ("bulk",) writes both rows, as one bulk of this process; ("beat", n) queues node n's
# watermark behind its changes; ("deliver", n) delivers node n's oldest message;
# ("reserve" | "read" | "fill", n) as in the first test, on the row of node n, and
# ("load", n) all three at once; ("get", n) reads node n's row with the client's token;
# ("reset",) ends the stream and subscribes again, losing what was queued. The watermark
# rules themselves (the least of every shard's) are pinned by the tests above.
ROWS = (8, 7)
# One list of equally likely steps, and sequences long enough to hold the races that matter.
cluster_steps = st.lists(st.sampled_from([
    ("bulk",), ("reset",),
    *(("write", node, own) for node in (0, 1) for own in (False, True)),
    *((kind, node) for kind in ("tick", "beat", "deliver", "load", "reserve", "read", "fill", "get", "get")
      for node in (0, 1)),
]), min_size=10, max_size=80)


@settings(max_examples=1000, deadline=None)
@given(cluster_steps)
def test_a_token_read_never_returns_a_version_older_than_the_writes_it_covers(plan):
    near = serving()
    clocks, queues = [100, 100], [[], []]
    versions = [1, 1]  # each row's version in Redis
    written = [[1], [1]]  # every version each row was written at
    own = [1, 1]  # the newest version this process wrote of each row
    token = NO_TOKEN
    reads = {}  # node -> [reservation, version read or None]

    def write(node):
        versions[node] = max(versions[node] + 1, clocks[node])
        written[node].append(versions[node])
        queues[node].append(("w", versions[node]))
        return versions[node]

    for step in plan:
        kind, node = step[0], step[1] if len(step) > 1 else 0
        key = ("album", ROWS[node])
        # Time passes on both nodes; a tick puts one ahead of the other.
        clocks = [clocks[0] + 1, clocks[1] + 1]
        if kind == "tick":
            clocks[node] += 3
        elif kind == "write":
            version = write(node)
            token = max(token, version)
            if step[2]:
                near.written("album", [ROWS[node]], version)
                own[node] = version
        elif kind == "bulk":
            bulk = [write(0), write(1)]
            near.written("album", list(ROWS), max(bulk))
            own = bulk
            token = max(token, *bulk)
        elif kind == "beat":
            queues[node].append(("h", clocks[node]))
        elif kind == "deliver" and queues[node]:
            message, value = queues[node].pop(0)
            if message == "h":
                near.heartbeat([node], 2, value)
            else:
                near.apply("album", "w", [[ROWS[node], value]])
        elif kind == "load":
            near.fill(key, near.reserve(key), versions[node], PENDING, b"")
        elif kind == "reserve":
            reads[node] = [near.reserve(key), None]
        elif kind == "read" and node in reads and reads[node][1] is None:
            reads[node][1] = versions[node]
        elif kind == "fill" and node in reads and reads[node][1] is not None:
            reservation, seen = reads.pop(node)
            near.fill(key, reservation, seen, PENDING, b"")
        elif kind == "get":
            entry = near.get(key, token)
            covered = max(v for v in written[node] if v <= token) if token >= 1 else 0
            assert entry is None or entry.version >= covered, (entry.version, covered, token)
            # What the gateway answers: the newest of the token and the version read.
            token = max(token, entry.version if entry else versions[node])
        elif kind == "reset":
            near.disable()
            near.enable()
            near.trust_until(time.monotonic() + 3600)
            queues = [[], []]
        for row in (0, 1):
            entry = near.get(("album", ROWS[row]))
            assert entry is None or entry.version >= own[row], (entry.version, own[row])
