"""The administrator's step before cache-svc starts where its Redis account may not load
Lua (compose and Kubernetes): `python -m cache_svc.load_functions`, with REDIS_URL naming
an account allowed FUNCTION LOAD, loads cache-svc's Redis functions library on the Redis
(every primary of a Redis Cluster, REDIS_CLUSTER=true)."""

import sys

import redis

from chinook.config import redact_url, settings_or_exit
from chinook.logs import configure_logging

from . import redis_clients
from .functions import LIBRARY, FunctionsMissing, primaries


def main():
    settings = settings_or_exit()
    configure_logging("cache-svc-functions", settings.log_level, settings.log_format)
    try:
        client = redis_clients.connect(settings.redis_url, settings.redis_cluster)
        nodes = primaries(client)
        for where, node in nodes:
            LIBRARY.load(node, f"Redis {where}")
    except FunctionsMissing as exc:
        sys.exit(f"load_functions: {exc}")
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        sys.exit(f"load_functions: cannot load the library on {redact_url(settings.redis_url)}: {exc}")
    print(f"Redis functions library {LIBRARY.name} loaded on {len(nodes)} node(s)")


if __name__ == "__main__":
    main()
