"""RowStore on a private Redis Cluster whose masters the tests kill: WAIT for replicas
(WRITEBACK_MIN_REPLICAS), and what a master's death does to accepted writes."""

import uuid

import pytest
import redis

from cache_svc import redis_clients
from cache_svc.store import RowStore
from cache_svc.transport import NotReplicated
from chinook.entities import ENTITIES
from testkit.stores import RedisClusterServer
from tests.integration.claims import claimed_rows

SHARDS = 16
ROWS = range(1, 401)


@pytest.fixture
def cluster(tmp_path):
    with RedisClusterServer(tmp_path / "cluster") as server:
        yield server


def row_store(cluster, **options) -> RowStore:
    client = redis_clients.connect(cluster.url, cluster=True)
    return RowStore(client, f"chinook_cluster_{uuid.uuid4().hex[:8]}:", ttl_s=3600, entities=ENTITIES,
                    shards=SHARDS, **options)


def cache_rows(store, ids):
    token = store.begin_fill("album", list(ids))
    store.fill("album", token, [(i, {"title": "old", "artist_id": 1}, 1) for i in ids])


def busiest_master(cluster, store):
    """The master holding the most shards."""
    by_port = {}
    for shard in range(SHARDS):
        master = cluster.master_for_key(store.keys.stats_key(shard))
        by_port.setdefault(master.port, []).append(shard)
    port = max(by_port, key=lambda p: len(by_port[p]))
    return cluster.node_at(port)


def test_an_update_is_acknowledged_once_a_replica_holds_it(cluster):
    store = row_store(cluster, min_replicas=1)
    cache_rows(store, ROWS)
    assert min(store.accept("album", [(i, {"title": f"new {i}"}) for i in ROWS])) > 0
    for master in cluster.masters():
        # What each replica holds as soon as the accept returned, read from the replica.
        replica = redis.Redis(port=cluster.replica_of(master).port, decode_responses=True,
                              single_connection_client=True)
        replica.execute_command("READONLY")
        for row_id in ROWS:
            key = store.keys.row_key("album", row_id)
            if cluster.master_for_key(key).port == master.port:
                assert replica.hget(key, "title") == f"new {row_id}"
        replica.close()


def test_more_replicas_than_exist_is_refused_not_acknowledged(cluster):
    store = row_store(cluster, min_replicas=2, replica_timeout_ms=100)
    cache_rows(store, [1])
    with pytest.raises(NotReplicated, match="only 1 of the 2 Redis replicas"):
        store.accept("album", [(1, {"title": "needs two replicas"})])


def test_an_update_whose_pipeline_reaches_a_replica_is_written_on_the_master(cluster, monkeypatch):
    """A failover demotes the node the client's slot map names for a row, between two of its
    reads of the map: its pipeline, WAIT included, reaches a replica. The update is retried
    on the master once the map is read again, not failed."""
    store = row_store(cluster, min_replicas=1)
    cache_rows(store, [1])
    calls, _ = store._accept_calls("album", [(1, {"title": "through a replica first"})], False, {}, None)
    master = cluster.master_for_key(calls[0][1][0])
    stale = redis.Redis(port=cluster.replica_of(master).port)
    routed = store.transport._by_node

    def by_stale_map(calls, positions):
        # Only the first route is the stale map's: the demoted node, now a replica.
        monkeypatch.setattr(store.transport, "_by_node", routed)
        return [(stale, positions)]

    monkeypatch.setattr(store.transport, "_by_node", by_stale_map)
    try:
        (reply,) = store.transport.run(calls, wait=True)
    finally:
        stale.close()
    assert reply[0] > 0
    assert store.get("album", 1).fields["title"] == "through a replica first"


def test_the_death_of_a_master_loses_no_update_its_replica_confirmed(cluster):
    store = row_store(cluster, min_replicas=1)
    cache_rows(store, ROWS)
    versions = dict(zip(ROWS, store.accept("album", [(i, {"title": f"confirmed {i}"}) for i in ROWS]), strict=False))
    master = busiest_master(cluster, store)
    cluster.kill(master)
    cluster.wait_for_failover(master)
    for row_id in ROWS:
        row = store.get("album", row_id)
        assert (row.fields["title"], row.version, row.dirty) == (f"confirmed {row_id}", versions[row_id], True)
    assert store.summary()[0]["album"][0] == len(ROWS)
    # The promoted replica has no replica of its own: its shards refuse updates...
    with pytest.raises(NotReplicated):
        store.accept("album", [(i, {"title": f"orphaned {i}"}) for i in ROWS])
    # ...until the dead master comes back, as its replica. Scripts are loaded again there.
    assert cluster.restart(master).role == "replica"
    assert min(store.accept("album", [(i, {"title": f"after {i}"}) for i in ROWS])) > 0
    claimed = claimed_rows(store.claim(0, 1000, 30_000))
    assert sorted(row.id for row in claimed) == list(ROWS)
