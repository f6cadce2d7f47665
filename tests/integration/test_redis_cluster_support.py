"""RedisClusterServer of testkit/stores.py: a private Redis Cluster whose masters a
test can crash, and what redis-py's cluster client needs to get through the failover.

The failover test takes about 5 s: 2 s to create the cluster, 2 s for the failover with
the default node timeout of 1 s, and under a second to bring the killed master back."""

import pytest
import redis
from redis.cluster import RedisCluster

from testkit.stores import RedisClusterServer, alive, parse_cluster_nodes, port_open


def test_a_write_acknowledged_by_wait_survives_the_sigkill_of_its_master(tmp_path):
    with RedisClusterServer(tmp_path / "cluster") as cluster:
        # redis-py 8.1 retries a command that meets a ConnectionError, a TimeoutError or
        # CLUSTERDOWN up to `retry.get_retries()` times (10 by default), reloading the slot
        # map from a live node (CLUSTER SLOTS) before each retry, and follows MOVED on its
        # own. It does not pause between those retries (its `retry` backoff is not used by
        # the cluster client yet), so they are spent within milliseconds of a master's
        # crash: a command sent before the replica is promoted fails. Hence the reads below
        # wait for the failover; past it, the defaults suffice.
        client = RedisCluster(startup_nodes=cluster.startup_nodes, decode_responses=True)
        values = {f"album:{number}": f"title {number}" for number in range(200)}
        for key, value in values.items():
            client.set(key, value)
        masters = cluster.masters()
        slots = {client.keyslot(key) for key in values}
        assert len(slots) > 150
        assert {master.port for master in masters} == {
            next(master.port for master in masters if master.serves(slot)) for slot in slots}
        assert redis.Redis.from_url(cluster.url).execute_command("ROLE")[0] == b"master"

        key = "album:1"
        master = cluster.master_for_key(key)
        replica = cluster.replica_of(master)
        node = client.get_node_from_key(key)
        assert node.port == master.port
        # WAIT counts the replicas that acknowledged the writes of its own connection, so it
        # follows the write on the node's connection; RedisCluster would send a WAIT, which
        # names no key, wherever it likes. The replication stream is ordered, so the
        # acknowledgement covers the master's earlier writes of the loop above too.
        with client.get_redis_connection(node).pipeline(transaction=False) as pipe:
            pipe.set(key, "acknowledged by a replica")
            pipe.execute_command("WAIT", 1, 1000)
            assert pipe.execute() == [True, 1]
        values[key] = "acknowledged by a replica"

        cluster.kill(master)
        promoted = cluster.wait_for_failover(master, timeout_s=30)
        assert promoted.id == replica.id
        assert {key: client.get(key) for key in values} == values

        rejoined = cluster.restart(master)
        assert (rejoined.id, rejoined.role, rejoined.master_id) == (master.id, "replica", promoted.id)
        with redis.Redis(port=master.port, single_connection_client=True, decode_responses=True) as former_master:
            former_master.execute_command("READONLY")  # a replica answers reads of its master's slots
            assert former_master.get(key) == "acknowledged by a replica"
        client.close()
        pids = [server.process.pid for server in cluster.servers]
        ports = [port for server in cluster.servers for port in server.ports]
    assert [pid for pid in pids if alive(pid)] == []
    assert [port for port in ports if port_open(port)] == []
    assert all((server.folder / "nodes.conf").exists() for server in cluster.servers)


@pytest.mark.parametrize("arguments, named", [
    ({"masters": 2}, "masters=2"),
    ({"replicas_per_master": -1}, "replicas_per_master=-1"),
    ({"node_timeout_ms": 0}, "node_timeout_ms=0"),
    ({"appendfsync": "sometimes"}, "appendfsync='sometimes'"),
])
def test_a_bad_argument_is_named(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=named):
        RedisClusterServer(tmp_path / "cluster", **arguments)


def test_cluster_nodes_lines_are_parsed():
    text = (
        "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,cache-2 slave "
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n"
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected "
        "0-5460 5461 [5462->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]\n"
        "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30002@40002 master,fail - 1426238316232 "
        "1426238315000 2 disconnected\n"
    )
    replica, master, failed = parse_cluster_nodes(text)
    assert (replica.port, replica.role, replica.master_id, replica.slots, replica.reachable) == (
        30004, "replica", master.id, (), True)
    assert (master.port, master.role, master.master_id, master.slots) == (
        30001, "master", None, ((0, 5460), (5461, 5461)))
    assert master.serves(5461) and not master.serves(5462)
    assert (failed.port, failed.flags, failed.connected, failed.reachable) == (
        30002, frozenset({"master", "fail"}), False, False)
