"""RowStore against a real Redis, under a key prefix of its own."""

import time
import uuid

import pytest

from cache_svc.store import RowStore


@pytest.fixture
def store(redis_client):
    prefix = f"chinook_store_{uuid.uuid4().hex[:10]}:"
    yield RowStore(redis_client, prefix, ttl_s=3600)
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        redis_client.delete(key)


def cache_row(store, row_id=1, title="Old", version=7):
    store.fill("album", [(row_id, {"title": title, "artist_id": 1}, version)])


def test_fill_caches_clean_rows_with_the_ttl(store):
    cache_row(store)
    row = store.get("album", 1)
    assert (row.fields, row.version, row.dirty) == ({"title": "Old", "artist_id": "1"}, 7, False)
    assert 3590 < store.redis.ttl(f"{store.prefix}album:1") <= 3600


def test_fill_never_overwrites_a_cached_row(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "New"})])
    cache_row(store, title="From Postgres", version=7)
    assert store.get("album", 1).fields["title"] == "New"


def test_accept_is_dirty_versioned_and_never_expires(store):
    cache_row(store)
    [version] = store.accept("album", [(1, {"title": "New"})])
    row = store.get("album", 1)
    assert row.dirty and row.version == version and row.fields["title"] == "New"
    assert version > 7
    assert store.redis.ttl(f"{store.prefix}album:1") == -1, "a dirty row must carry no TTL"
    assert store.pending("album")[0] == 1


def test_versions_grow_and_follow_the_clock(store):
    cache_row(store, version=0)
    versions = [store.accept("album", [(1, {"title": f"t{i}"})])[0] for i in range(5)]
    assert versions == sorted(set(versions))
    now_us = time.time() * 1_000_000
    assert abs(versions[-1] - now_us) < 60_000_000, "versions come from the Redis clock"


def test_accept_of_an_uncached_row_reports_it(store):
    assert store.accept("album", [(42, {"title": "x"})]) == [-1]
    assert store.pending("album")[0] == 0


def test_updates_before_a_flush_are_coalesced_into_one_row_write(store):
    cache_row(store)
    for i in range(10):
        store.accept("album", [(1, {"title": f"t{i}"})])
    claimed = store.claim("album", delay_ms=0, batch_size=100, lease_ms=30_000)
    assert [(r.id, r.fields["title"]) for r in claimed] == [(1, "t9")]


def test_claim_waits_for_the_delay_unless_a_batch_is_full(store):
    for i in range(1, 4):
        cache_row(store, row_id=i)
        store.accept("album", [(i, {"title": "x"})])
    assert store.claim("album", delay_ms=60_000, batch_size=10, lease_ms=30_000) == []
    claimed = store.claim("album", delay_ms=60_000, batch_size=2, lease_ms=30_000)
    assert len(claimed) == 2, "a full batch goes at once"


def test_claimed_rows_are_leased_and_claimed_again_when_the_lease_ends(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    assert len(store.claim("album", delay_ms=0, batch_size=10, lease_ms=300)) == 1
    assert store.claim("album", delay_ms=0, batch_size=10, lease_ms=300) == [], "leased rows are not claimed twice"
    time.sleep(0.4)
    assert [r.id for r in store.claim("album", delay_ms=0, batch_size=10, lease_ms=300)] == [1]


def test_ack_of_the_current_version_makes_the_row_clean(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    [claimed] = store.claim("album", delay_ms=0, batch_size=10, lease_ms=30_000)
    cleaned, lags = store.ack("album", [(1, claimed.version)], written=1)
    assert cleaned == 1 and len(lags) == 1 and lags[0] >= 0
    row = store.get("album", 1)
    assert not row.dirty and row.fields["title"] == "x"
    assert store.redis.ttl(f"{store.prefix}album:1") > 0
    assert store.pending("album") == (0, None)
    assert store.counters() == {"accepted": 1, "flushed": 1}


def test_ack_of_an_older_version_keeps_a_newer_write_dirty_and_due(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "first"})])
    [claimed] = store.claim("album", delay_ms=0, batch_size=10, lease_ms=30_000)
    store.accept("album", [(1, {"title": "second"})])
    cleaned, _ = store.ack("album", [(1, claimed.version)], written=1)
    assert cleaned == 0
    row = store.get("album", 1)
    assert row.dirty and row.fields["title"] == "second"
    [again] = store.claim("album", delay_ms=0, batch_size=10, lease_ms=30_000)
    assert again.fields["title"] == "second", "a write during a flush is flushed without waiting for the lease"


def test_release_makes_claimed_rows_claimable_again(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    store.claim("album", delay_ms=0, batch_size=10, lease_ms=30_000)
    store.release("album", [1])
    assert len(store.claim("album", delay_ms=0, batch_size=10, lease_ms=30_000)) == 1


def test_expedite_skips_the_delay(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    assert store.claim("album", delay_ms=60_000, batch_size=10, lease_ms=30_000) == []
    assert store.expedite("album") == 1
    assert len(store.claim("album", delay_ms=60_000, batch_size=10, lease_ms=30_000)) == 1


def test_ack_newer_than_a_clean_cached_row_drops_it(store):
    cache_row(store, version=7)
    store.ack("album", [(1, 9)], written=0)
    assert store.get("album", 1) is None, "a stale clean entry must be reloaded, not served"


def test_values_are_stored_verbatim(store):
    title = "Robert'); DROP TABLE album;-- ünïcødé ✓"
    cache_row(store)
    store.accept("album", [(1, {"title": title})])
    assert store.get("album", 1).fields["title"] == title
