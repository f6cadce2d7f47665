"""How cache-svc's function calls reach Redis: pipelined, in one round trip to a single
Redis or one per node of a Redis Cluster (each call's first key names its slot), retried
while a cluster's slot map changes under them (a failover, a slot move, a pipeline that
reached a master a failover has just demoted), with the
functions library loaded on a node that lacks it, and, for writes that must be
replicated, each pipeline ended by WAIT on the same connection.
"""

import time

import redis

from .functions import NOT_FOUND, Library, ensure_loaded

# Tries of a call on a cluster whose slot map changes under it (a failover), with
# backoff between them: about 1.5 s in all.
CLUSTER_ATTEMPTS = 6


# What a replica answers WAIT with.
REPLICA_WAIT = "WAIT cannot be used with replica instances"


class ReplicaReached(redis.ConnectionError):
    """A pipeline that must be confirmed by replicas reached a replica, not a master: a
    failover demoted the node the slot map named. Its writes were refused there (MOVED) or
    are written again on the new master once the slot map is read again; when that does not
    come in time, Redis counts as unavailable, and the write is not reported accepted."""


class NotReplicated(Exception):
    """Fewer Redis replicas than WRITEBACK_MIN_REPLICAS confirmed a write in time: it is
    not reported accepted (it may still be applied; writing it again is harmless)."""


class Transport:
    """Runs calls of the functions of `library` on `client`, one Redis or a
    redis.RedisCluster. With min_replicas, the calls run with wait are confirmed by that
    many replicas (Redis WAIT) within replica_timeout_ms."""

    def __init__(self, client, library: Library, min_replicas: int = 0, replica_timeout_ms: int = 1000):
        self.redis = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.library = library
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms

    def node_name(self, key: str) -> str:
        """The node holding `key` on a cluster; the same for every key on one Redis."""
        return self.redis.get_node_from_key(key).name if self.cluster else ""

    def run(self, calls: list, wait: bool = False) -> list:
        """Runs (function, keys, args) calls, pipelined. With wait and min_replicas, writes
        fewer replicas confirmed in time raise NotReplicated. Returns the replies in order.
        With no calls, returns at once: an empty pipeline costs no round trip but, with
        tracing on, a span, and each batch of single updates referencing no row made one."""
        if not calls:
            return []
        wait = wait and self.min_replicas > 0
        if len(calls) == 1 and not wait and not self.cluster:
            function, keys, args = calls[0]
            try:
                return [self.redis.fcall(function, len(keys), *keys, *args)]
            except redis.ResponseError as exc:
                if not str(exc).startswith(NOT_FOUND):
                    raise
                ensure_loaded(self.library, self.redis)
                return [self.redis.fcall(function, len(keys), *keys, *args)]
        replies = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(CLUSTER_ATTEMPTS):
            last = attempt == CLUSTER_ATTEMPTS - 1
            retry = []
            for client, positions in self._by_node(calls, todo):
                try:
                    node_replies = self._pipeline(client, [calls[i] for i in positions], wait)
                except (redis.ConnectionError, redis.TimeoutError):
                    if not self.cluster or last:
                        raise
                    retry += positions
                    continue
                for i, reply in zip(positions, node_replies, strict=False):
                    if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                                          redis.exceptions.TryAgainError)) and self.cluster and not last:
                        retry.append(i)
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        replies[i] = reply
            if not retry:
                return replies
            # A failover or a slot move: read the slot map again, then retry those calls,
            # waiting longer each time, since a failover takes about twice the cluster's
            # node timeout.
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
            try:
                self.redis.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                pass  # no node answered yet: the next try finds out
            todo = retry
        return replies

    def _by_node(self, calls: list, positions: list[int]) -> list[tuple[redis.Redis, list[int]]]:
        if not self.cluster:
            return [(self.redis, positions)]
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for i in positions:
            node = self.redis.get_node_from_key(calls[i][1][0])
            groups.setdefault(node.name, (self.redis.get_redis_connection(node), []))[1].append(i)
        return list(groups.values())

    def _pipeline(self, client: redis.Redis, calls: list, wait: bool) -> list:
        """The calls on one node in one round trip, plus one for the calls of functions the
        node lacks (new, or restarted without its data), once the library is loaded."""
        replies = [None] * len(calls)
        todo = range(len(calls))
        confirmed = None
        for _ in range(2):
            with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    function, keys, args = calls[i]
                    pipe.fcall(function, len(keys), *keys, *args)
                if wait:
                    pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
                round_replies = pipe.execute(raise_on_error=False)
            if wait:
                # WAIT counts the replicas holding every write made on its connection:
                # each round's own, since each round may take another connection.
                *round_replies, replicas = round_replies
                if isinstance(replicas, redis.ResponseError) and str(replicas).startswith(REPLICA_WAIT):
                    raise ReplicaReached(f"{REPLICA_WAIT}: this node became a replica (a failover), or "
                                         "REDIS_URL names a replica; the write is not accepted, retry shortly")
                if isinstance(replicas, Exception):
                    raise replicas
                confirmed = replicas if confirmed is None else min(confirmed, replicas)
            for i, reply in zip(todo, round_replies, strict=False):
                replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], redis.ResponseError)
                    and str(replies[i]).startswith(NOT_FOUND)]
            if not todo:
                break
            ensure_loaded(self.library, client)
        if wait and confirmed < self.min_replicas:
            raise NotReplicated(
                f"only {confirmed} of the {self.min_replicas} Redis replicas WRITEBACK_MIN_REPLICAS asks for "
                f"confirmed the write within {self.replica_timeout_ms} ms (WRITEBACK_REPLICA_TIMEOUT_MS); "
                "it is not accepted, retry shortly")
        return replies
