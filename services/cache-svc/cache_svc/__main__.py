"""Starts the cache service: `python -m cache_svc`."""

import logging
import sys

import redis
from prometheus_client import REGISTRY

from chinook import heap, metrics, tracing
from chinook.cache.v1 import cache_pb2_grpc
from chinook.config import redact_url, settings_or_exit
from chinook.entities import ENTITIES, register_modules_or_exit
from chinook.grpc_client import CACHE_SERVICE, PersistenceClient
from chinook.grpc_server import GrpcService, listening_credentials
from chinook.logs import configure_logging
from chinook.tls import channel_credentials

from . import redis_clients
from .changes import MAX_SUBSCRIBERS, ChangeRelay, HeartbeatPublisher
from .flusher import Flusher
from .functions import LIBRARY, ensure_loaded
from .publisher import TaskPublisher
from .servicer import CacheServicer
from .store import RowStore
from .writeback import WriteBack

DEFAULT_METRICS_PORT = 9101
# Whose certificate it presents under GRPC_TLS_DIR, and who it is to the servers it calls.
IDENTITY = "cache-svc"
# Threads for unary calls, beside the ones change subscribers hold.
UNARY_WORKERS = 16
log = logging.getLogger("cache-svc")


def check_durability(client: redis.Redis, appendfsync: str, node: str = ""):
    """Applies REDIS_APPENDFSYNC, or warns if Redis would lose accepted writes in a
    crash or could evict dirty rows."""
    where = f"Redis {node}" if node else "Redis"
    try:
        if appendfsync:
            client.config_set("appendonly", "yes")
            client.config_set("appendfsync", appendfsync)
        config = {**client.config_get("appendonly"), **client.config_get("appendfsync"),
                  **client.config_get("maxmemory-policy")}
    except redis.exceptions.NoPermissionError:
        # A least-privileged ACL user (compose, Kubernetes): Redis' own configuration
        # sets persistence there, and only a REDIS_APPENDFSYNC that cannot apply is a fault.
        if appendfsync:
            log.warning("REDIS_APPENDFSYNC=%s is not applied: the Redis user of REDIS_URL may not run CONFIG. "
                        "Set appendonly yes and appendfsync %s in Redis' own configuration and leave "
                        "REDIS_APPENDFSYNC empty", appendfsync, appendfsync)
        else:
            log.info("not checking Redis' persistence settings: the Redis user of REDIS_URL may not run "
                     "CONFIG GET; Redis' own configuration must keep appendonly yes, appendfsync always and "
                     "a volatile-* maxmemory-policy")
        return
    except redis.ResponseError as exc:
        log.warning("cannot read or set %s's persistence settings (%s); make sure it runs with "
                    "appendonly yes, appendfsync always and a volatile-* maxmemory-policy", where, exc)
        return
    if config.get("appendonly") != "yes":
        log.warning("%s does not persist (appendonly no): accepted writes not yet in Postgres are lost "
                    "if it crashes. Set REDIS_APPENDFSYNC=always, or run Redis with --appendonly yes", where)
    else:
        log.info("%s persists with appendonly yes, appendfsync %s", where, config.get("appendfsync"))
    if config.get("maxmemory-policy", "").startswith("allkeys"):
        log.warning("%s maxmemory-policy %s may evict dirty rows before they reach Postgres; "
                    "use volatile-lru (dirty rows carry no TTL)", where, config["maxmemory-policy"])


def check_replicas(client: redis.Redis, min_replicas: int, node: str):
    """Warns when a primary has fewer replicas than WRITEBACK_MIN_REPLICAS: every update
    it holds would then be refused."""
    try:
        info = client.info("replication")
    except redis.ResponseError as exc:
        log.info("cannot read Redis %s's replication (%s)", node, exc)
        return
    if info.get("role") == "master" and info.get("connected_slaves", 0) < min_replicas:
        log.warning("Redis %s has %d connected replicas but WRITEBACK_MIN_REPLICAS=%d: updates of its rows get "
                    "503 until enough replicas follow it", node, info.get("connected_slaves", 0), min_replicas)


def main():
    settings = settings_or_exit()
    configure_logging("cache-svc", settings.log_level, settings.log_format)
    register_modules_or_exit(settings.entity_modules)
    # Before anything connects: a server that may not listen as configured stops here.
    credentials = listening_credentials(settings, IDENTITY)
    # Before the clients are made: their channels and calls get traced from the start.
    tracing.setup("cache-svc", "redis", "celery")
    try:
        client = redis_clients.connect(settings.redis_url, settings.redis_cluster)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        # Only a cluster client reaches out at once, to read the slot map.
        sys.exit(f"cache-svc: cannot reach the Redis Cluster at {redact_url(settings.redis_url)} (REDIS_CLUSTER=true): "
                 f"{exc}. Start it, or set REDIS_URL to one of its nodes")
    store = RowStore(client, settings.redis_key_prefix, settings.cache_ttl_s, ENTITIES,
                     settings.writeback_max_pending, settings.writeback_shards, settings.writeback_min_replicas,
                     settings.writeback_replica_timeout_ms)
    persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s,
                                    channel_credentials(settings, IDENTITY))
    publisher = TaskPublisher(settings)
    publisher.declare_queues()
    write_back = WriteBack(store, persistence, settings.writeback_lease_ms)
    flusher = Flusher(store, publisher, settings)
    relay = ChangeRelay(redis_clients.subscriber_factory(settings.redis_url, client), store.keys.changes_channel,
                        settings.near_cache_max_lag_ms / 1000)
    heartbeats = HeartbeatPublisher(store)

    durability_checked = False

    def probe():
        nonlocal durability_checked
        try:
            store.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc}. "
                                  "Start Redis (`redis-server`) or set REDIS_URL") from exc
        # Not ready, and writing nothing, while rows wait under another WRITEBACK_SHARDS.
        store.ensure_layout()
        # Not ready while the scripts' library is missing and this account may not load it.
        ensure_loaded(LIBRARY, client)
        if not durability_checked:
            for node, node_client in redis_clients.node_clients(client):
                check_durability(node_client, settings.redis_appendfsync, node if settings.redis_cluster else "")
                if settings.writeback_min_replicas:
                    check_replicas(node_client, settings.writeback_min_replicas, node)
            durability_checked = True
        # Not ready while a task queue has the other type: an operator has to migrate it.
        publisher.check_queue_types()

    REGISTRY.register(metrics.PendingCollector(write_back.status, settings.writeback_max_pending))
    metrics.serve(settings.metrics_port or DEFAULT_METRICS_PORT, settings.metrics_host)
    service = GrpcService(settings.cache_grpc_port, [CACHE_SERVICE], probe=probe,
                          max_workers=UNARY_WORKERS + MAX_SUBSCRIBERS, credentials=credentials,
                          host=settings.grpc_host)
    cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(write_back, publisher, relay), service.server)
    flusher.start()
    relay.start()
    heartbeats.start()
    service.on_stopping(relay.stop)
    service.on_stopping(heartbeats.stop)
    service.on_stop(flusher.stop)
    service.on_stop(publisher.close)
    service.on_stop(persistence.close)
    service.on_stop(tracing.shutdown)
    heap.freeze_startup_objects()
    service.serve_forever()


if __name__ == "__main__":
    main()
