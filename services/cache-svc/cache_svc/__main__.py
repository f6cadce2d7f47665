"""Starts the cache service: `python -m cache_svc`."""

import logging
import sys

import redis
from prometheus_client import REGISTRY

from chinook import metrics
from chinook.cache.v1 import cache_pb2_grpc
from chinook.celery_setup import QueueTypeMismatch
from chinook.config import redact_url, settings_or_exit
from chinook.entities import ENTITIES
from chinook.grpc_client import CACHE_SERVICE, PersistenceClient
from chinook.grpc_server import GrpcService
from chinook.logs import configure_logging
from chinook.tls import channel_credentials, server_credentials

from .changes import MAX_SUBSCRIBERS, ChangeRelay
from .flusher import Flusher
from .publisher import TaskPublisher
from .servicer import CacheServicer
from .store import RowStore
from .writeback import WriteBack


DEFAULT_METRICS_PORT = 9101
# Threads for unary calls, beside the ones change subscribers hold.
UNARY_WORKERS = 16
log = logging.getLogger("cache-svc")


def check_durability(client: redis.Redis, appendfsync: str):
    """Applies REDIS_APPENDFSYNC, or warns if Redis would lose accepted writes in a
    crash or could evict dirty rows."""
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
        log.warning("cannot read or set Redis' persistence settings (%s); make sure Redis runs with "
                    "appendonly yes, appendfsync always and a volatile-* maxmemory-policy", exc)
        return
    if config.get("appendonly") != "yes":
        log.warning("Redis does not persist (appendonly no): accepted writes not yet in Postgres are lost "
                    "if Redis crashes. Set REDIS_APPENDFSYNC=always, or run Redis with --appendonly yes")
    else:
        log.info("Redis persists with appendonly yes, appendfsync %s", config.get("appendfsync"))
    if config.get("maxmemory-policy", "").startswith("allkeys"):
        log.warning("Redis maxmemory-policy %s may evict dirty rows before they reach Postgres; "
                    "use volatile-lru (dirty rows carry no TTL)", config["maxmemory-policy"])


def main():
    settings = settings_or_exit()
    configure_logging("cache-svc", settings.log_level)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=10,
                                  socket_connect_timeout=2, socket_timeout=10)
    store = RowStore(client, settings.redis_key_prefix, settings.cache_ttl_s, ENTITIES,
                     settings.writeback_max_pending)
    persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s,
                                    channel_credentials(settings))
    publisher = TaskPublisher(settings)
    try:
        publisher.declare_queues()
    except QueueTypeMismatch as exc:
        sys.exit(f"cache-svc: {exc}")
    write_back = WriteBack(store, persistence)
    flusher = Flusher(store, publisher, settings)
    relay = ChangeRelay(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2),
                        store.changes_channel, settings.near_cache_max_lag_ms / 1000)

    durability_checked = False

    def probe():
        nonlocal durability_checked
        try:
            store.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc}. "
                                  "Start Redis (`redis-server`) or set REDIS_URL") from exc
        if not durability_checked:
            check_durability(client, settings.redis_appendfsync)
            durability_checked = True

    REGISTRY.register(metrics.PendingCollector(write_back.status))
    metrics.serve(settings.metrics_port or DEFAULT_METRICS_PORT)
    service = GrpcService(settings.cache_grpc_port, [CACHE_SERVICE], probe=probe,
                          max_workers=UNARY_WORKERS + MAX_SUBSCRIBERS, credentials=server_credentials(settings))
    cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(write_back, publisher, relay), service.server)
    flusher.start()
    relay.start()
    service.on_stopping(relay.stop)
    service.on_stop(flusher.stop)
    service.on_stop(persistence.close)
    service.serve_forever()


if __name__ == "__main__":
    main()
