"""The span contexts a pending row keeps for its flush's links (docs/tracing.md), in the
real Lua scripts, on one Redis and on a Redis Cluster."""

import uuid

import pytest

from cache_svc import redis_clients
from cache_svc.store import RowStore
from chinook.entities import ENTITIES
from chinook.tracing import LINK_WIDTH, LINKS_PER_ROW, split_links
from testkit.stack import delete_prefixed
from tests.integration.claims import claimed_rows

SHARDS = 4


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request, redis_client):
    if request.param == "redis":
        client = redis_client
    else:
        client = redis_clients.connect(request.getfixturevalue("redis_cluster").url, cluster=True)
    prefix = f"chinook_links_{uuid.uuid4().hex[:10]}:"
    yield RowStore(client, prefix, ttl_s=3600, entities=ENTITIES, max_pending=100, shards=SHARDS)
    delete_prefixed(client, prefix)


def link(n: int) -> str:
    """A distinct span context as tracing keeps it."""
    return f"{n:032x}{n:016x}"


def cache_row(store, row_id, title="Old", version=7):
    token = store.begin_fill("album", [row_id])
    store.fill("album", token, [(row_id, {"title": title, "artist_id": 1}, version)])


def claim(store):
    return {row.id: row for row in claimed_rows(store.claim(0, 100, 30_000))}


def test_a_row_keeps_the_links_of_its_latest_writes_until_it_is_claimed(store):
    cache_row(store, 1)
    for n in range(1, LINKS_PER_ROW + 3):
        store.accept("album", [(1, {"title": f"t{n}"})], links=[link(n)])
    row = claim(store)[1]
    assert row.fields["title"] == f"t{LINKS_PER_ROW + 2}"
    assert len(row.links) == LINKS_PER_ROW * LINK_WIDTH
    assert split_links(row.links) == [link(n) for n in range(3, LINKS_PER_ROW + 3)], "the latest, in order"
    # The claimed ones travel in the task: claimed again (released, or its lease ended),
    # the row carries none, and a write after the claim starts afresh.
    store.release("album", [1])
    assert claim(store)[1].links == ""
    store.accept("album", [(1, {"title": "after"})], links=[link(99)])
    assert claim(store)[1].links == link(99)


def test_updates_without_links_keep_none_and_leave_the_row_as_before(store):
    cache_row(store, 2)
    cache_row(store, 3)
    store.accept("album", [(2, {"title": "x"})])
    store.accept("album", [(3, {"title": "y"})], links=[None])
    rows = claim(store)
    assert rows[2].links == rows[3].links == ""
    assert rows[2].fields == {"title": "x", "artist_id": 1}


def test_each_update_of_a_batch_keeps_its_own_link(store):
    for row_id in (4, 5, 6):
        cache_row(store, row_id)
    results = store.accept_each("album", [(4, {"title": "a"}), (5, {"title": "b"}), (6, {"title": "c"})],
                                links=[link(4), None, link(6)])
    assert [version > 0 for version, _ in results] == [True, True, True]
    assert results[0][1].fields["title"] == "a", "the reply is the row, without its links"
    rows = claim(store)
    assert {row_id: row.links for row_id, row in rows.items()} == {4: link(4), 5: "", 6: link(6)}


def test_a_partial_row_of_a_bulk_keeps_its_link(store):
    versions = store.accept("album", [(7, {"title": "bulk"}), (8, {"title": "bulk"})], bases={7: 3, 8: 3},
                            links=[link(1), link(1)])
    assert all(version > 3 for version in versions)
    rows = claim(store)
    assert rows[7].partial and rows[7].links == link(1) and rows[8].links == link(1)
    assert rows[7].fields == {"title": "bulk"}
