"""The cache service's Redis clients, made in one place: one Redis, or a Redis Cluster
(REDIS_CLUSTER) reached through any of its nodes."""

import random
from urllib.parse import urlsplit

import hiredis
import redis

# Connection settings of every client: a Redis that does not answer fails a call in
# seconds, not minutes.
OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 10}


class CommandPacker:
    """Packs a command for the wire as redis-py's hiredis packer does, without first copying
    every argument to turn memoryviews and bytearrays into bytes: cache-svc sends none, and a
    bulk's script calls carry five arguments a row (packing them took 1.17 µs a row, 0.70
    this way)."""

    def pack(self, *args):
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.DataError(exc) from None


def connect(url: str, cluster: bool) -> redis.Redis | redis.RedisCluster:
    """The client of the rows and their bookkeeping (decoded strings)."""
    if cluster:
        # A failover answers with connection errors, then MOVED: the client re-reads the
        # slot map and retries. Its nodes' connections take redis-py's own packer (the
        # cluster client passes no packer on).
        return redis.RedisCluster.from_url(url, decode_responses=True, **OPTIONS)
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                command_packer=CommandPacker(), **OPTIONS)


def node_clients(client) -> list[tuple[str, redis.Redis]]:
    """(host:port, client) of every node: the one Redis, or each node of the cluster."""
    if isinstance(client, redis.RedisCluster):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_nodes()]
    kwargs = client.connection_pool.connection_kwargs
    return [(f"{kwargs.get('host')}:{kwargs.get('port')}", client)]


def subscriber_factory(url: str, client):
    """A function that opens a new client for pub/sub (bytes, as the change relay reads
    them) on a live node: published messages reach every node of a cluster, so any one
    will do, and after a failover another one is taken."""
    if not isinstance(client, redis.RedisCluster):
        return lambda: redis.Redis.from_url(url, socket_connect_timeout=2)
    parts = urlsplit(url)

    def open_on_a_node():
        nodes = client.get_nodes()
        node = random.choice(nodes)
        netloc = parts.netloc.rpartition("@")
        address = f"{node.host}:{node.port}"
        return redis.Redis.from_url(parts._replace(netloc=f"{netloc[0]}@{address}" if netloc[1] else address)
                                    .geturl(), socket_connect_timeout=2)

    return open_on_a_node
