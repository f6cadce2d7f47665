"""RowStore against a real Redis and a real Redis Cluster, under a key prefix of its own."""

import json
import time
import uuid

import pytest
from redis.crc import key_slot

from cache_svc import redis_clients
from cache_svc.functions import LIBRARY, ensure_loaded, primaries
from cache_svc.keys import LayoutError, ShardRetired
from cache_svc.store import Acknowledged, Backpressure, RowStore
from chinook.entities import ENTITIES, new_claim_id
from testkit.stack import delete_prefixed
from tests.integration.claims import claimed_rows

SHARDS = 4


@pytest.fixture(params=["redis", "redis-cluster"])
def client(request, redis_client):
    if request.param == "redis":
        return redis_client
    return redis_clients.connect(request.getfixturevalue("redis_cluster").url, cluster=True)


@pytest.fixture
def store(client):
    prefix = f"chinook_store_{uuid.uuid4().hex[:10]}:"
    yield RowStore(client, prefix, ttl_s=3600, entities=ENTITIES, max_pending=5, shards=SHARDS)
    delete_prefixed(client, prefix)


def claim(store, entity="album", **options):
    """The rows of `entity` one claim of every shard takes."""
    return claim_with_id(store, entity, **options)[0]


def claim_with_id(store, entity="album", **options):
    """The rows of `entity` one claim of every shard takes, and the claim id their task carries."""
    shards = store.claim(**options)
    return claimed_rows(shards, entity), shards[0].claim


def claimed_batches(store, entity="album", lease_ms=30_000):
    """The batches of `entity` one claim of every shard takes at once, with what each covers."""
    return [shard.rows[entity] for shard in store.claim(delay_ms=0, batch_size=10, lease_ms=lease_ms)
            if entity in shard.rows]


def claim_and_dead_letter(store, row_id=1, error="refused"):
    """Claims the row and dead-letters the version claimed, as a worker does; returns the
    version and how many rows were dead-lettered."""
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    assert claimed.id == row_id
    return claimed.version, store.dead_letter("album", [(row_id, claimed.version, error)], claim_id)


def pending(store, entity="album"):
    return store.summary()[0][entity]


def bookkeeping(store, row_id=1, entity="album"):
    """Everything the cache keeps of a row and its shard: the row's hash and TTL, the due and
    pending sets with their scores, the dead letters and the counters."""
    shard, client = store.keys.shard_of(row_id), store.redis
    key = store.keys.row_key(entity, row_id)
    return (client.hgetall(key), client.ttl(key),
            client.zrange(store.keys.due_key(shard, entity), 0, -1, withscores=True),
            client.zrange(store.keys.pending_key(shard, entity), 0, -1, withscores=True),
            client.hgetall(store.keys.dead_key(shard, entity)), client.hgetall(store.keys.stats_key(shard)))


def cache_row(store, row_id=1, title="Old", version=7):
    token = store.begin_fill("album", [row_id])
    store.fill("album", token, [(row_id, {"title": title, "artist_id": 1}, version)])


def test_fill_caches_clean_rows_with_the_ttl(store):
    cache_row(store)
    row = store.get("album", 1)
    assert (row.fields, row.version, row.dirty) == ({"title": "Old", "artist_id": "1"}, 7, False)
    assert 3590 < store.redis.ttl(store.keys.row_key("album", 1)) <= 3600


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
    assert store.redis.ttl(store.keys.row_key("album", 1)) == -1, "a dirty row must carry no TTL"
    assert pending(store)[0] == 1


def test_versions_grow_and_follow_the_clock(store):
    cache_row(store, version=0)
    versions = [store.accept("album", [(1, {"title": f"t{i}"})])[0] for i in range(5)]
    assert versions == sorted(set(versions))
    now_us = time.time() * 1_000_000
    assert abs(versions[-1] - now_us) < 60_000_000, "versions come from the Redis clock"


def test_asking_about_no_rows_sends_nothing(store, monkeypatch):
    """A batch of single updates that reference no row asks which of none are uncached, a
    batch of reads whose ids are all invalid reads none: neither makes a pipeline, which
    with tracing on was a span of every such batch."""
    def no_pipeline(*_, **__):
        raise AssertionError("a pipeline was made for no calls")

    monkeypatch.setattr(store.redis, "pipeline", no_pipeline)
    assert store.uncached_ids("artist", []) == []
    assert store.get_many([]) == []


def test_accept_of_an_uncached_row_reports_it(store):
    assert store.accept("album", [(42, {"title": "x"})]) == [-1]
    assert pending(store)[0] == 0


def test_updates_before_a_flush_are_coalesced_into_one_row_write(store):
    cache_row(store)
    for i in range(10):
        store.accept("album", [(1, {"title": f"t{i}"})])
    claimed = claim(store, delay_ms=0, batch_size=100, lease_ms=30_000)
    assert [(r.id, r.fields["title"]) for r in claimed] == [(1, "t9")]


def test_claim_waits_for_the_delay_unless_a_batch_is_full(store):
    # Rows of one shard: a batch is full when one shard holds it.
    for i in (SHARDS, 2 * SHARDS, 3 * SHARDS):
        cache_row(store, row_id=i)
        store.accept("album", [(i, {"title": "x"})])
    assert claim(store, delay_ms=60_000, batch_size=10, lease_ms=30_000) == []
    claimed = claim(store, delay_ms=60_000, batch_size=2, lease_ms=30_000)
    assert len(claimed) == 2, "a full batch goes at once"


def test_claimed_rows_are_leased_and_claimed_again_when_the_lease_ends(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    assert len(claim(store, delay_ms=0, batch_size=10, lease_ms=300)) == 1
    assert claim(store, delay_ms=0, batch_size=10, lease_ms=300) == [], "leased rows are not claimed twice"
    time.sleep(0.4)
    assert [r.id for r in claim(store, delay_ms=0, batch_size=10, lease_ms=300)] == [1]


def test_ack_of_the_current_version_makes_the_row_clean(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    acknowledged = store.ack("album", [1], [claimed.version], claim_id)
    assert acknowledged.cleaned == 1 and len(acknowledged.lags_ms) == 1 and acknowledged.lags_ms[0] >= 0
    row = store.get("album", 1)
    assert not row.dirty and row.fields["title"] == "x"
    assert "_claim" not in store.redis.hgetall(store.keys.row_key("album", 1))
    assert store.redis.ttl(store.keys.row_key("album", 1)) > 0
    assert pending(store) == (0, None)
    assert store.counters() == {"accepted": 1, "flushed": 1}
    # A redelivered task acknowledges again: the row is no longer in flight, nothing changes.
    assert store.ack("album", [1], [claimed.version], claim_id) == Acknowledged(0, [], 0, [])
    assert store.counters() == {"accepted": 1, "flushed": 1}


def test_ack_of_an_older_version_keeps_a_newer_write_dirty_and_due(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "first"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.accept("album", [(1, {"title": "second"})])
    second_accepted_ms = int(store.redis.hget(store.keys.row_key("album", 1), "_since"))
    acknowledged = store.ack("album", [1], [claimed.version], claim_id)
    assert (acknowledged.cleaned, acknowledged.flushed) == (0, 1), "the first write is durable, counted once"
    row = store.get("album", 1)
    assert row.dirty and row.fields["title"] == "second"
    assert pending(store) == (1, second_accepted_ms), "pending since the write the flush did not cover"
    [again] = claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    assert again.fields["title"] == "second", "a write during a flush is flushed without waiting for the lease"


def test_an_ack_of_no_claim_another_claim_or_another_version_changes_nothing(store):
    subscriber = store.redis.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(store.keys.changes_channel)
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    before = bookkeeping(store)
    forged = [("", claimed.version), (new_claim_id(), claimed.version), (claim_id, claimed.version - 1),
              (claim_id, claimed.version + 1)]
    for claim_named, version in forged:
        assert store.ack("album", [1], [version], claim_named) == Acknowledged(0, [], 0, []), (claim_named, version)
        assert store.dead_letter("album", [(1, version, "refused")], claim_named) == 0, (claim_named, version)
        assert bookkeeping(store) == before, (claim_named, version)
    assert store.ack("album", [1], [claimed.version], claim_id).cleaned == 1
    messages, deadline = [], time.monotonic() + 10
    while len(messages) < 4 and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=1)
        if message is not None:
            messages.append(json.loads(message["data"])["k"])
    subscriber.close()
    # Loaded, written, cleaned: the forged calls published nothing in between.
    assert messages == ["f", "w", "c"]


def test_a_pending_row_not_claimed_yet_is_not_acknowledged(store):
    cache_row(store)
    [version] = store.accept("album", [(1, {"title": "x"})])
    _, claim_id = claim_with_id(store, delay_ms=60_000, batch_size=10, lease_ms=30_000)
    before = bookkeeping(store)
    assert store.ack("album", [1], [version], claim_id) == Acknowledged(0, [], 0, [])
    assert bookkeeping(store) == before and store.get("album", 1).dirty


def test_a_row_claimed_again_after_its_lease_is_cleaned_by_the_new_claim_only(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    [first], first_claim = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=0)
    [again], second_claim = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    assert (again.id, again.version) == (first.id, first.version) and second_claim != first_claim
    assert store.ack("album", [1], [first.version], first_claim).cleaned == 0, "the old task's ack is fenced off"
    assert store.get("album", 1).dirty
    assert store.ack("album", [1], [again.version], second_claim).cleaned == 1
    assert store.counters()["flushed"] == 1


def test_a_row_in_flight_without_a_claim_id_is_claimed_again_when_its_lease_ends(store):
    """As a row claimed before claims were kept: no acknowledgement matches it."""
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=0)
    store.redis.hdel(store.keys.row_key("album", 1), "_claim")
    assert store.ack("album", [1], [claimed.version], claim_id).cleaned == 0
    [again], new_claim = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    assert store.ack("album", [1], [again.version], new_claim).cleaned == 1


def test_release_makes_claimed_rows_claimable_again(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.release("album", [1])
    assert len(claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)) == 1


def test_expedite_skips_the_delay(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    assert claim(store, delay_ms=60_000, batch_size=10, lease_ms=30_000) == []
    assert store.expedite() == 1
    assert len(claim(store, delay_ms=60_000, batch_size=10, lease_ms=30_000)) == 1


def test_an_ack_newer_than_a_clean_row_reports_it_and_postgres_decides_whether_it_is_dropped(store):
    cache_row(store, version=7)
    before = bookkeeping(store)
    acknowledged = store.ack("album", [1], [9], new_claim_id())
    assert acknowledged == Acknowledged(0, [], 0, [1]) and bookkeeping(store) == before, "an ack alone drops nothing"
    assert store.drop_outdated("album", {1: 7}) == 0 and bookkeeping(store) == before
    assert store.drop_outdated("album", {1: 9}) == 1
    assert store.get("album", 1) is None, "a stale clean entry must be reloaded, not served"
    store.accept("album", [(1, {"title": "pending"})], bases={1: 9})
    assert store.drop_outdated("album", {1: 2**52}) == 0, "a dirty row is never dropped"


def test_values_are_stored_verbatim(store):
    title = "Robert'); DROP TABLE album;-- ünïcødé ✓"
    cache_row(store)
    store.accept("album", [(1, {"title": title})])
    assert store.get("album", 1).fields["title"] == title


def test_a_load_overtaken_by_another_fill_does_not_cache_its_stale_value(store):
    slow_token = store.begin_fill("album", [1])  # a reader starts loading version 7
    cache_row(store, version=7)  # another loader caches it first...
    store.accept("album", [(1, {"title": "New"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.ack("album", [1], [claimed.version], claim_id)  # ...it is written, flushed...
    store.redis.delete(store.keys.row_key("album", 1))  # ...and evicted
    [reply] = store.fill("album", slow_token, [(1, {"title": "Old", "artist_id": 1}, 7)], reply=True)
    assert reply is None and store.get("album", 1) is None, "the slow reader must not cache version 7"


def test_backpressure_refuses_new_pending_rows_beyond_the_limit(store):
    for i in range(1, 8):
        cache_row(store, row_id=i)
    store.accept("album", [(i, {"title": "x"}) for i in range(1, 6)])
    with pytest.raises(Backpressure, match="WRITEBACK_MAX_PENDING"):
        store.accept("album", [(6, {"title": "refused"})])
    assert store.get("album", 6).fields["title"] == "Old" and store.pending_total() == 5
    assert store.accept("album", [(1, {"title": "already pending rows still take writes"})])[0] > 0


def test_claim_reports_how_many_writes_a_flush_covers(store):
    cache_row(store)
    for i in range(4):
        store.accept("album", [(1, {"title": f"t{i}"})])
    [batch] = claimed_batches(store)
    assert (batch.count, batch.writes) == (1, 4)


def test_writes_during_a_flush_count_for_the_next_one_only(store):
    cache_row(store)
    for i in range(3):
        store.accept("album", [(1, {"title": f"before {i}"})])
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.accept("album", [(1, {"title": "during 0"})])
    during_ms = int(store.redis.hget(store.keys.row_key("album", 1), "_since"))
    store.accept("album", [(1, {"title": "during 1"})])
    assert store.ack("album", [1], [claimed.version], claim_id).flushed == 1
    assert pending(store) == (1, during_ms), "pending since the first write the flush did not cover"
    [again] = claimed_batches(store)
    assert (again.count, again.writes) == (1, 2)


def test_a_row_claimed_again_at_the_same_version_covers_no_write_of_its_own(store):
    cache_row(store)
    for i in range(3):
        store.accept("album", [(1, {"title": f"t{i}"})])
    [first] = claimed_batches(store, lease_ms=0)
    [again] = claimed_batches(store)
    assert (first.writes, again.writes) == (3, 1)
    assert store.inspect("album", 1, 30_000).state == "in_flight"


def test_dead_letter_takes_the_row_out_of_the_schedule_but_keeps_its_value(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "poison"})])
    version, dead_lettered = claim_and_dead_letter(store, error="violates a constraint")
    assert dead_lettered == 1
    row = store.get("album", 1)
    assert row.dead_lettered and row.fields["title"] == "poison"
    assert store.redis.ttl(store.keys.row_key("album", 1)) == -1
    assert claim(store, delay_ms=0, batch_size=10, lease_ms=30_000) == []
    [entry] = store.dead_letters("album")
    assert (entry.id, entry.version, entry.error) == (1, version, "violates a constraint")
    assert store.summary()[1] == 1 and store.pending_total() == 0


def test_a_newer_write_is_not_dead_lettered_for_an_older_failure(store):
    cache_row(store)
    [old] = store.accept("album", [(1, {"title": "poison"})])
    _, claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.accept("album", [(1, {"title": "fixed"})])
    assert store.dead_letter("album", [(1, old, "refused")], claim_id) == 0
    assert len(claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)) == 1


def test_a_new_write_supersedes_a_dead_letter(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "poison"})])
    claim_and_dead_letter(store)
    store.accept("album", [(1, {"title": "fixed"})])
    assert store.summary()[1] == 0 and not store.get("album", 1).dead_lettered
    assert [r.fields["title"] for r in claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)] == ["fixed"]


def test_retry_schedules_a_dead_letter_again(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "poison"})])
    version, _ = claim_and_dead_letter(store)
    assert store.resolve_dead_letter("album", 1, "retry").version == version
    assert [r.version for r in claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)] == [version]
    assert store.resolve_dead_letter("album", 1, "retry") is None


def test_discard_drops_the_cached_row(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "poison"})])
    claim_and_dead_letter(store)
    store.resolve_dead_letter("album", 1, "discard")
    assert store.get("album", 1) is None and store.pending_total() == 0 and store.summary()[1] == 0


def test_a_column_set_to_null_is_removed_from_the_row(store):
    store.fill("artist", store.begin_fill("artist", [1]), [(1, {"name": "AC/DC"}, 1)])
    [version] = store.accept("artist", [(1, {"name": None})])
    row = store.get("artist", 1)
    assert row.version == version and row.dirty and "name" not in row.fields


def test_a_row_not_cached_is_accepted_as_a_partial_row_above_the_postgres_version(store):
    [version] = store.accept("album", [(9, {"title": "Bulk"})], bases={9: 2**52})
    row = store.get("album", 9)
    assert row.partial and row.dirty and row.fields == {"title": "Bulk"}
    assert version == row.version > 2**52
    assert store.accept("album", [(10, {"title": "x"})], bases={}) == [-1]
    [claimed] = claim(store, delay_ms=0, batch_size=10, lease_ms=1000)
    assert claimed.partial and claimed.fields == {"title": "Bulk"}


def test_a_null_written_to_a_partial_row_is_kept_as_null(store):
    store.accept("artist", [(4, {"name": None})], bases={4: 0})
    row = store.get("artist", 4)
    assert row.partial and row.fields == {"name": "\0"}
    assert ENTITIES["artist"].columns_from_store(row.fields) == {"name": None}


def test_merge_completes_a_partial_row_keeping_the_columns_written_since(store):
    [version] = store.accept("album", [(9, {"title": "Bulk"})], bases={9: 3})
    [merged] = store.merge("album", [(9, {"title": "From Postgres", "artist_id": 5})])
    assert not merged.partial and merged.version == version and merged.dirty
    assert merged.fields == {"title": "Bulk", "artist_id": "5"}
    [again] = store.merge("album", [(9, {"title": "Other", "artist_id": 6})])
    assert again.fields == merged.fields
    assert store.merge("album", [(11, {"title": "Not cached", "artist_id": 1})]) == [None]


def test_a_fill_never_overwrites_a_partial_row(store):
    token = store.begin_fill("album", [9])
    store.accept("album", [(9, {"title": "Bulk"})], bases={9: 1})
    [cached] = store.fill("album", token, [(9, {"title": "Old", "artist_id": 1}, 1)], reply=True)
    assert cached.partial and cached.fields == {"title": "Bulk"}


def test_each_change_is_published_with_the_step_that_makes_it(store):
    subscriber = store.redis.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(store.keys.changes_channel)
    cache_row(store, row_id=1, title="Old", version=7)
    [(version, _)] = store.accept_each("album", [(1, {"title": "Single"})])
    store.accept("album", [(2, {"title": "Bulk"})], bases={2: 3})
    messages, deadline = [], time.monotonic() + 10
    while len(messages) < 3 and time.monotonic() < deadline:
        # None also stands for the subscription's confirmation, which is skipped.
        message = subscriber.get_message(timeout=1)
        if message is not None:
            messages.append(json.loads(message["data"]))
    subscriber.close()
    assert [(m["e"], m["k"]) for m in messages] == [("album", "f"), ("album", "v"), ("album", "w")]
    assert messages[0]["r"] == [[1, 7]]
    assert messages[1]["r"] == [[1, version, {"title": "Single", "artist_id": "1"}]]
    assert messages[2]["r"][0][0] == 2 and len(messages[2]["r"][0]) == 2


def test_a_watermark_of_each_shard_follows_every_change_its_node_made_before(store):
    subscriber = store.redis.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(store.keys.changes_channel)
    ids = range(1, 2 * SHARDS + 1)
    versions = store.accept("album", [(row_id, {"title": "Bulk"}) for row_id in ids], bases=dict.fromkeys(ids, 3))
    calls = store.heartbeat()
    written, watermarks, beats, deadline = {}, {}, 0, time.monotonic() + 10
    while len(watermarks) < SHARDS and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=1)
        if message is None:
            continue
        change = json.loads(message["data"])
        if change["k"] == "h":
            assert change["n"] == SHARDS and not set(change["s"]) & set(watermarks), change
            # One call per node: every shard it names lives where the call ran.
            assert len({store.transport.node_name(store.keys.stats_key(shard)) for shard in change["s"]}) == 1, change
            watermarks.update(dict.fromkeys(change["s"], change["u"]))
            beats += 1
            # Every change of those shards' rows arrived before, each below the watermark.
            assert all(row_id in written and written[row_id] < change["u"] for row_id in ids
                       if store.keys.shard_of(row_id) in change["s"]), (written, change)
        else:
            written.update({row_id: version for row_id, version in change["r"]})
    subscriber.close()
    assert set(watermarks) == set(range(SHARDS)) and beats == len(calls)
    assert written == dict(zip(ids, versions, strict=False))


def test_changing_the_number_of_shards_is_refused_while_rows_are_pending(store):
    cache_row(store, row_id=3)
    store.accept("album", [(3, {"title": "pending under 4 shards"})])
    resharded = RowStore(store.redis, store.prefix, ttl_s=3600, entities=ENTITIES, shards=2 * SHARDS)
    with pytest.raises(LayoutError, match=f"1 rows are pending.*WRITEBACK_SHARDS={SHARDS}"):
        resharded.adopt_layout()
    # Refused: the first layout keeps taking writes.
    assert store.accept("album", [(3, {"title": "still accepted"})])[0] > 0
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.ack("album", [3], [claimed.version], claim_id)
    resharded.adopt_layout()
    with pytest.raises(ShardRetired, match="restart this cache-svc"):
        store.accept("album", [(3, {"title": "into a retired layout"})])
    assert resharded.get("album", 3) is None, "layouts never share a key"


def test_the_keys_of_a_shard_share_one_hash_slot(store):
    keys = [store.keys.row_key("album", row_id) for row_id in range(1, 50 * SHARDS, SHARDS)]
    keys += [store.keys.due_key(1, "album"), store.keys.pending_key(1, "track"), store.keys.stats_key(1), store.keys.dead_key(1, "artist")]
    assert all(key.startswith(f"{store.prefix}{{1/{SHARDS}}}:") for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert key_slot(store.keys.row_key("album", 2).encode()) != key_slot(keys[0].encode())


def redis_now_s(store):
    return store.now_ms() / 1000


def inspected_during(store, action, row_id=1, entity="album", lease_ms=30_000):
    """Runs action, then inspects the row: its RowState, and the Redis time (s) before the
    action and after the inspection, which its `since` must lie between, to 2 ms: a clean
    row's is the inspection's time in whole ms less the TTL spent, itself in whole ms, so
    it may read up to 2 ms early."""
    before = redis_now_s(store) - 0.002
    action()
    state = store.inspect(entity, row_id, lease_ms)
    return state, before, redis_now_s(store) + 0.002


def test_inspect_tells_where_a_write_is_and_since_when(store):
    assert store.inspect("album", 1, 30_000) is None

    state, before, after = inspected_during(store, lambda: cache_row(store))
    assert (state.state, state.row.version, state.row.fields["title"]) == ("clean", 7, "Old")
    assert before <= state.since <= after, "a loaded row is clean since it was loaded"

    versions = []
    state, before, after = inspected_during(store, lambda: versions.extend(store.accept("album", [(1, {"title": "x"})])))
    assert (state.state, state.row.version, state.row.fields["title"]) == ("pending", versions[0], "x")
    accepted_at = state.since
    assert before <= accepted_at <= after
    store.accept("album", [(1, {"title": "y"})])
    assert store.inspect("album", 1, 30_000).since == accepted_at, "pending since the oldest write not claimed"

    state, before, after = inspected_during(
        store, lambda: claim(store, delay_ms=0, batch_size=10, lease_ms=30_000))
    assert state.state == "in_flight" and before <= state.since <= after, "in flight since the claim"

    state, before, after = inspected_during(store, lambda: versions.extend(store.accept("album", [(1, {"title": "z"})])))
    assert state.state == "pending" and before <= state.since <= after, "a write during a flush waits for the next"
    [claimed], claim_id = claim_with_id(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    assert store.inspect("album", 1, 30_000).state == "in_flight"

    state, before, after = inspected_during(store, lambda: store.ack("album", [1], [claimed.version], claim_id))
    assert (state.state, state.row.version) == ("clean", versions[-1])
    assert before <= state.since <= after, "clean since the flush"


def test_inspect_a_released_claim_and_a_lease_that_ended(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "x"})])
    accepted_at = store.inspect("album", 1, 30_000).since
    claim(store, delay_ms=0, batch_size=10, lease_ms=30_000)
    store.release("album", [1])
    state = store.inspect("album", 1, 30_000)
    assert (state.state, state.since) == ("pending", accepted_at), "a released row waits for a claim again"

    state, before, after = inspected_during(store, lambda: claim(store, delay_ms=0, batch_size=10, lease_ms=1))
    time.sleep(0.01)
    state = store.inspect("album", 1, 1)
    assert state.state == "in_flight" and before <= state.since <= after, "claimed, not acknowledged: in flight"


def test_inspect_a_dead_letter_and_a_partial_row(store):
    cache_row(store)
    store.accept("album", [(1, {"title": "poison"})])
    claim_and_dead_letter(store)
    [entry] = store.dead_letters("album")
    state = store.inspect("album", 1, 30_000)
    assert (state.state, state.since, state.row.fields["title"]) == ("dead_letter", entry.failed_at, "poison")
    store.resolve_dead_letter("album", 1, "retry")
    assert store.inspect("album", 1, 30_000).state == "pending"

    store.accept("album", [(SHARDS + 1, {"title": "Bulk"})], bases={SHARDS + 1: 3})
    state = store.inspect("album", SHARDS + 1, 30_000)
    assert state.state == "pending" and state.row.partial and state.row.fields == {"title": "Bulk"}


def test_a_redis_that_lost_the_functions_library_gets_it_again(store, client):
    """A Redis restarted without its data has no library: the next call loads it once
    (where this account may; elsewhere the administrator's step does) and goes on."""
    cache_row(store)
    ensure_loaded(LIBRARY, client)
    for _, node in primaries(client):
        node.function_delete(LIBRARY.name)
    assert store.accept("album", [(1, {"title": "New"})])[0] > 7
    # Loaded again on the node that holds the row, the one the call went to.
    owner = client.get_redis_connection(client.get_node_from_key(store.keys.row_key("album", 1))) \
        if store.transport.cluster else client
    assert LIBRARY.is_loaded(owner)
    assert store.get("album", 1).fields["title"] == "New"
