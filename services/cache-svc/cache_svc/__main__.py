"""Starts the cache service: `python -m cache_svc`."""

import redis

from chinook.cache.v1 import cache_pb2_grpc
from chinook.config import settings_or_exit
from chinook.grpc_client import CACHE_SERVICE, PersistenceClient
from chinook.grpc_server import GrpcService
from chinook.logs import configure_logging

from .flusher import Flusher
from .publisher import TaskPublisher
from .servicer import CacheServicer
from .store import RowStore
from .writeback import WriteBack


def main():
    settings = settings_or_exit()
    configure_logging("cache-svc", settings.log_level)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=10,
                                  socket_connect_timeout=2, socket_timeout=10)
    store = RowStore(client, settings.redis_key_prefix, settings.cache_ttl_s)
    persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s)
    publisher = TaskPublisher(settings)
    write_back = WriteBack(store, persistence, settings)
    flusher = Flusher(store, publisher, settings)

    def probe():
        try:
            store.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"cannot reach Redis at {settings.redis_url}: {exc}. "
                                  "Start Redis (`redis-server`) or set REDIS_URL") from exc

    service = GrpcService(settings.cache_grpc_port, [CACHE_SERVICE], probe=probe)
    cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(write_back, publisher), service.server)
    flusher.start()
    service.on_stop(flusher.stop)
    service.on_stop(persistence.close)
    service.serve_forever()


if __name__ == "__main__":
    main()
