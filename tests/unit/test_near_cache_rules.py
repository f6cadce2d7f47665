"""The near cache's rules for races between reads, writes and published changes.

The property test plays a row's history: writes at growing versions, each published in
order, and reads through the near cache that reserve, read what the cache holds at some
moment, and fill later, with the changes arriving at any point in between. Whatever the
interleaving, once every change has arrived the near cache holds the latest version or
nothing, and it never serves a version older than the changes it has already seen.
"""

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.near_cache import CLEAN, DEAD_LETTER, PENDING, NearCache

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
