"""B6: B1 and B2 on a single Redis and on a Redis Cluster, with one and two cache-svc,
without and with WAIT; each configuration on a stack of its own (database, key prefix,
vhost) over private Redis servers, started for it and stopped after."""

import contextlib
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from chinook.config import load_settings
from testkit.stack import Isolation, Stack
from testkit.stores import RedisClusterServer, RedisServer

from .. import stores
from ..measure import System, command_version, cpu_ms, log
from ..profiles import BASE_ALBUMS, Profile
from .b1_bulk import bulk
from .b2_updates import system_updates
from .b4_growth import duplicate

if TYPE_CHECKING:
    from ..run import Bench


@dataclass(frozen=True)
class ScalingConfig:
    """One configuration of B6: its store, cache-svc replicas and WRITEBACK_MIN_REPLICAS,
    and the configuration it is compared with (the ratio tells what the difference costs)."""

    key: str
    label: str
    cluster: bool
    cache_svcs: int
    min_replicas: int
    baseline: str | None = None
    cost_of: str | None = None


B6_CONFIGS = (
    ScalingConfig("a", "single Redis, 1 cache-svc", cluster=False, cache_svcs=1, min_replicas=0),
    ScalingConfig("b", "single Redis, 2 cache-svc", cluster=False, cache_svcs=2, min_replicas=0,
                  baseline="a", cost_of="a second cache-svc"),
    ScalingConfig("c", "Redis Cluster 3+3, no WAIT", cluster=True, cache_svcs=1, min_replicas=0,
                  baseline="a", cost_of="the cluster client"),
    ScalingConfig("d", "Redis Cluster 3+3, WAIT 1", cluster=True, cache_svcs=1, min_replicas=1,
                  baseline="c", cost_of="WAIT"),
)
CLUSTER_MASTERS = 3
CLUSTER_REPLICAS_PER_MASTER = 1
# As k8s/components/clustered-stores runs its nodes (the tests' clusters fail over faster).
CLUSTER_NODE_TIMEOUT_MS = 5000


def run(bench: "Bench"):
    """For each configuration a stack of its own over private Redis servers: B1 at the B2
    size (first to cache the rows, then measured on them) and B2 with uniform single
    updates."""
    profile = bench.profile
    settings = load_settings()
    with redis.Redis.from_url(settings.redis_url, decode_responses=True) as bench_redis:
        appendfsync, bench_persistence = b6_appendfsync(bench_redis)
    # A connection of its own: the main run's closed with its stack, if it ran.
    admin = stores.admin_connection(settings.database_url)
    try:
        b6 = bench.results["b6"] = {
            "rows": profile.load_size, "b2_duration_s": profile.b6_duration_s,
            "concurrency": profile.concurrency,
            "redis_server": command_version("redis-server", "--version"),
            "bench_redis_persistence": bench_persistence,
            "private_redis_persistence": {"appendonly": "yes", "appendfsync": appendfsync},
            "cluster": {"masters": CLUSTER_MASTERS, "replicas_per_master": CLUSTER_REPLICAS_PER_MASTER,
                        "node_timeout_ms": CLUSTER_NODE_TIMEOUT_MS},
            "configs": [],
        }
        log(f"B6: {len(B6_CONFIGS)} configurations, private Redis servers with appendonly yes, "
            f"appendfsync {appendfsync} (the bench's Redis: {bench_persistence})")
        postmaster = stores.postmaster_pid(admin)
        for config in B6_CONFIGS:
            b6["configs"].append(run_config(profile, bench.workdir, admin, config, appendfsync, postmaster))
    finally:
        admin.close()


def run_config(profile: Profile, workdir: Path, admin, config: ScalingConfig, appendfsync: str,
               postmaster: int | None) -> dict:
    name = f"B6 ({config.key}) {config.label}"
    n = profile.load_size
    multiplier, rest = divmod(n, BASE_ALBUMS)
    if rest or not (multiplier == 1 or 2 <= multiplier <= 64):
        raise ValueError(f"B6 cannot grow the album table from {BASE_ALBUMS} to {n} rows by duplication")
    started = time.monotonic()
    workdir = workdir / f"b6{config.key}"
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-b6{config.key}-") as data, \
            contextlib.ExitStack() as cleanup:
        if config.cluster:
            store = RedisClusterServer(Path(data), CLUSTER_MASTERS, CLUSTER_REPLICAS_PER_MASTER,
                                       CLUSTER_NODE_TIMEOUT_MS, appendfsync)
            ports = [server.port for server in store.servers]
        else:
            store = RedisServer(Path(data), appendfsync)
            ports = [store.port]
        log(f"{name}: starting {len(ports)} Redis server(s), a database, a vhost and the stack")
        cleanup.enter_context(store)
        isolation = Isolation.create(f"b6{config.key}")
        cleanup.callback(isolation.destroy)
        stack = Stack(isolation, workdir, {
            "REDIS_URL": store.url, "REDIS_CLUSTER": "true" if config.cluster else "false",
            "WRITEBACK_MIN_REPLICAS": str(config.min_replicas),
            # The private servers' persistence is set at their start: cache-svc leaves it.
            "REDIS_APPENDFSYNC": ""})
        replicas_of = {}
        for index in range(2, config.cache_svcs + 1):
            replica = f"cache-svc-{index}"
            stack.add_cache_svc(replica)
            replicas_of[replica] = "cache-svc"
        if replicas_of:
            stack.balance_cache_svcs()
        cleanup.callback(stack.stop)
        stack.start()
        nodes = [redis.Redis(port=port) for port in ports]
        for node in nodes:
            cleanup.callback(node.close)
        system = System(stack, nodes, postmaster, replicas_of)
        if multiplier > 1:
            duplicate(system.api, multiplier, n, profile.durable_timeout_s)
            stores.analyze(isolation.database_url)
        setup_s = time.monotonic() - started
        bulks = {}
        for cache in ("cold", "warm"):
            tag = f"{n}-b6{config.key}-{cache}-{random.randrange(16**6):06x}"
            result = bulks[cache] = bulk(profile, system, n, tag)
            result.pop("series")
            log(f"{name}: B1 N={n:,} ({cache} cache) acknowledged in {result['ack_s']:.3f} s, durable in "
                f"{result['durable_s']:.3f} s ({result['durable_rows_per_s']:,.0f} rows/s), "
                f"{1000 * cpu_ms(result['cpu_ms_per_row']):.0f} µs CPU per row")
        updates = system_updates(profile, system, admin, "uniform", list(range(1, n + 1)), profile.b6_duration_s)
        # That the configuration ran as named: calls each cache-svc answered, and WAITs
        # Redis ran, over the whole run.
        calls = {replica: stores.grpc_server_calls(stores.scrape(port), "CacheService")
                 for replica, port in stack.cache_metrics_ports.items()}
        waits = sum(stores.redis_command_calls(node, "wait") for node in nodes)
    return {**asdict(config), "redis_servers": len(ports), "cache_svc_calls": calls, "redis_wait_calls": waits,
            "setup_s": round(setup_s, 1), "elapsed_s": round(time.monotonic() - started, 1),
            "b1": bulks, "b2_uniform": updates, "summary": b6_summary(bulks["warm"], updates)}


def b6_summary(warm_bulk: dict, updates: dict) -> dict:
    """What docs quote of a B6 configuration: B1 on cached rows and B2 uniform, with each
    component's CPU per row (µs) and per request (ms) and their sum, the load generator
    left out."""
    per_row = {name: round(1000 * ms, 1) for name, ms in warm_bulk["cpu_ms_per_row"].items()
               if name != "load generator"}
    per_request = {name: ms for name, ms in updates["cpu_ms_per_request"].items() if name != "load generator"}
    return {
        "b1_ack_s": warm_bulk["ack_s"], "b1_durable_s": warm_bulk["durable_s"],
        "b1_ack_rows_per_s": warm_bulk["ack_rows_per_s"],
        "b1_durable_rows_per_s": warm_bulk["durable_rows_per_s"],
        "b1_cpu_us_per_row": {**per_row, "all": round(1000 * cpu_ms(warm_bulk["cpu_ms_per_row"]), 1)},
        "b2_throughput_rps": updates["throughput_rps"], "b2_p50_ms": updates["p50_ms"],
        "b2_p99_ms": updates["p99_ms"], "b2_errors": updates["errors"],
        "b2_cpu_ms_per_request": {**per_request, "all": round(cpu_ms(updates["cpu_ms_per_request"]), 4)},
    }


def b6_appendfsync(client: redis.Redis) -> tuple[str, dict]:
    """The appendfsync of B6's private Redis servers, which keep an append-only file (as
    testkit/stores.py starts them), and the bench's own Redis' settings: its
    appendfsync if it keeps an append-only file too; if not, "no" (written, but never
    fsynced by Redis), the nearest a server with one comes to none."""
    settings = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    return (settings["appendfsync"] if settings["appendonly"] == "yes" else "no"), settings
