"""The benchmark: the real stack on free ports (as the end-to-end tests start it), the
anchors beside it, scenarios B1-B5 and a read-mostly mix in one run; then B6, B1 and B2
again on stacks of their own over private Redis servers: one Redis or a Redis Cluster,
one or two cache-svc, with and without WAIT.

The album table (347 rows) grows by duplication, through the system's own
`POST /tasks/duplicate` for the system's database and by `INSERT ... SELECT` for
the anchors' database, so B1 runs at each size of the profile with the table
exactly that large.
"""

import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg2
import redis

from chinook.config import load_settings
from testkit import metrics
from testkit.api import Api
from testkit.stack import Isolation, Stack
from testkit.stores import RedisClusterServer, RedisServer, descendants

from . import stores
from .anchors import floor
from .load import percentile, request_bytes, run_load, run_sweep, uniform_chooser, zipf_chooser
from .profile import Profiler
from .staleness import StaleReadProbe
from .trace_sink import TraceSink

BASE_ALBUMS = 347
FLOOR_TRIES = 3
# B3 and the mix: Zipf-skewed ids, the k-th most popular with weight 1/k**s.
ZIPF_S = 1.1
# The read-mostly mix: this share of its requests are PATCHes, the rest GETs.
MIX_PATCH_SHARE = 0.05
# The documented bound: after a write was acknowledged, no gateway serves the row's
# older value for longer than this.
STALE_BOUND_S = 1.0
# The stale-read probe: rows of its own (kept out of the mix), a probe every interval,
# polling every poll_s; a write not visible after give_up_s counts as never visible.
PROBE_ROWS = 16
PROBE_INTERVAL_S = 0.25
PROBE_POLL_S = 0.002
PROBE_PRIME_READS = 3
PROBE_GIVE_UP_S = 3 * STALE_BOUND_S
NEAR_CACHE_ROWS = "GATEWAY_NEAR_CACHE_ROWS"
NEAR_COUNTERS = ("hits", "misses", "evictions", "invalidations", "reconnects")
# Gateway processes publish their near-cache counts in batches, up to a quarter second
# late: read them after this pause.
NEAR_COUNTS_WAIT_S = 0.5
SECOND_GATEWAY = "gateway-b"
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Profile:
    name: str
    # Table sizes B1 runs at, in growing order; each step multiplies the table by 2-64.
    b1_sizes: tuple
    # The sizes reported as B1 proper (the others belong to the B5 scaling curve).
    b1_headline: tuple
    # The table size B2 and B3 run at; B4 then duplicates it to twice that.
    load_size: int
    b2_duration_s: float
    b3_duration_s: float
    # The read-mostly mix, per target.
    mix_duration_s: float
    # B6's single updates, per configuration (B1 runs there at load_size).
    b6_duration_s: float
    warmup_s: float
    concurrency: int = 16
    hot_rows: int = 10
    # Rows per POST /albums/bulk (the API takes at most 100,000).
    bulk_chunk: int = 100_000
    durable_timeout_s: float = 600
    # How long to let Postgres backends publish their transaction counts before reading
    # them (they do when idle, at most once a second).
    stats_wait_s: float = 1.2


FULL = Profile("full", b1_sizes=(1_388, 11_104, 88_832, 355_328), b1_headline=(11_104, 88_832),
               load_size=11_104, b2_duration_s=20, b3_duration_s=10, mix_duration_s=10, b6_duration_s=10,
               warmup_s=1.0)
# A few rows and a second of load: `make test` runs it so the code cannot rot.
SMOKE = Profile("smoke", b1_sizes=(BASE_ALBUMS, 2 * BASE_ALBUMS), b1_headline=(BASE_ALBUMS,),
                load_size=BASE_ALBUMS, b2_duration_s=1, b3_duration_s=1, mix_duration_s=1, b6_duration_s=1,
                warmup_s=0.2,
                bulk_chunk=250,
                durable_timeout_s=60, stats_wait_s=0.3)
# B1 at the B2/B3 size only, and shorter loads: for profiling and quick looks.
QUICK = Profile("quick", b1_sizes=(1_388, 11_104), b1_headline=(11_104,), load_size=11_104,
                b2_duration_s=8, b3_duration_s=8, mix_duration_s=8, b6_duration_s=5, warmup_s=1.0)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}

# What a run may be limited to (--only): B1-B5 with the mix on the system beside the
# anchors, or B6 on stacks of its own.
MAIN_SCENARIOS, SCALING_SCENARIO = "B1-B5", "B6"
SCENARIOS = (MAIN_SCENARIOS, SCALING_SCENARIO)


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


def plan(profile: Profile) -> list[tuple]:
    """The steps in order: ("grow", multiplier, new size, is_b4), ("b1", n), ("b2",), ("b3",),
    ("mix",), ("b3_near_off",). The mix runs while B3 has left the near cache warm, B3's
    runs without it after."""
    targets = sorted(set(profile.b1_sizes) | {profile.load_size, 2 * profile.load_size})
    steps, size = [], BASE_ALBUMS
    for target in targets:
        if target != size:
            multiplier, rest = divmod(target, size)
            if rest or not 2 <= multiplier <= 64:
                raise ValueError(f"cannot grow the album table from {size} to {target} rows by duplication")
            steps.append(("grow", multiplier, target, size == profile.load_size and target == 2 * size))
            size = target
        if target in profile.b1_sizes:
            steps.append(("b1", target))
        if target == profile.load_size:
            steps += [("b2",), ("b3",), ("mix",), ("b3_near_off",)]
    return steps


def log(message: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class System:
    """A running system as the scenarios measure it: its processes (a Stack), its HTTP API,
    cache-svc's counters, and the CPU of every process that serves it."""

    def __init__(self, stack: Stack, redis_nodes: list[redis.Redis], postmaster: int | None,
                 replicas_of: dict[str, str] | None = None, others: dict[str, Callable[[], int]] | None = None):
        self.stack = stack
        self.api = Api(stack)
        # cache-svc's own counters, read as it lays them out in its shards.
        self.counters = stack.row_store().counters
        # Every Redis server cache-svc uses: one, or each node of a cluster.
        self.redis_nodes = redis_nodes
        self.postmaster = postmaster
        # Processes counted with another one, as one component: {replica: component}.
        self.replicas_of = replicas_of or {}
        # Processes beside the stack, by name: a function giving each one's current pid.
        self.others = others or {}

    @property
    def gateway(self) -> tuple[int, int]:
        """The first gateway's port and gunicorn master's pid."""
        return self.stack.gateway_port, self.stack.processes["gateway"].pid

    def redis_time_us(self) -> int:
        seconds, micros = self.redis_nodes[0].time()
        return seconds * 1_000_000 + micros

    def cpu_snapshot(self) -> dict:
        """CPU seconds used so far by each component of the stack, the other processes,
        Redis (every server), Postgres (the whole server: other databases' work counts too)
        and this process (the load generator)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        snapshot = {}
        for name, process in self.stack.processes.items():
            component = self.replicas_of.get(name, name)
            snapshot[component] = snapshot.get(component, 0.0) + stores.cpu_seconds(process.pid)
        for name, pid in self.others.items():
            snapshot[name] = stores.cpu_seconds(pid())
        snapshot["redis-server"] = sum(stores.redis_cpu_seconds(node) for node in self.redis_nodes)
        if self.postmaster:
            snapshot["postgres"] = stores.cpu_seconds(self.postmaster)
        snapshot["load generator"] = usage.ru_utime + usage.ru_stime
        return snapshot


class Bench:
    def __init__(self, profile: Profile, workdir: Path, profile_dir: Path | None = None,
                 scenarios: tuple[str, ...] = SCENARIOS, tracing: bool = False):
        unknown = set(scenarios) - set(SCENARIOS)
        if unknown or not scenarios:
            raise ValueError(f"scenarios {sorted(unknown) or '(none)'}: choose among {', '.join(SCENARIOS)}")
        self.profile = profile
        self.profile_dir = profile_dir
        self.scenarios = scenarios
        # With tracing, B1-B5's system sends every span to a sink that drops them.
        self.tracing = tracing
        self.trace_sink = None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.results = {"profile": asdict(profile), "b1": [], "b2": {}, "b3": {}, "mix": {}, "b4": None,
                        "growth": [], "memory": [], "b6": None}
        self.isolation = self.anchor = self.stack = self.monolith = self.system = None
        self.table_size = BASE_ALBUMS

    def profiled(self, label: str | None, mode: str = "cpu", focus: dict | None = None):
        """py-spy on every service process while in the `with`, if profiling was asked for."""
        if self.profile_dir is None or label is None:
            return contextlib.nullcontext()
        return Profiler(self.profile_dir, label, self.stack.processes, mode, focus)

    @staticmethod
    def cpu_per_request(before: dict, after: dict, requests: int) -> dict:
        """CPU milliseconds per request of each component that used any."""
        spent = {name: after[name] - before[name] for name in before if name in after}
        return {name: round(1000 * seconds / requests, 4) for name, seconds in spent.items()
                if seconds > 0.005} if requests else {}

    def _load(self, port: int, master_pid: int, next_request, duration_s: float, label: str | None = None,
              tiers: bool = False, system: System | None = None) -> tuple[dict, dict, dict]:
        """A closed-loop load at the profile's concurrency against a gunicorn server: its
        summary with latency percentiles, CPU per request of every component (of `system`,
        the main one by default) and how the server's workers shared their CPU
        (X-Cache-Tier counts if `tiers`), and the CPU snapshots before and after."""
        system = system or self.system
        workers_before = stores.workers_cpu_seconds(master_pid)
        cpu_before = system.cpu_snapshot()
        with self.profiled(label):
            result = run_load(port, next_request, self.profile.concurrency, duration_s, self.profile.warmup_s,
                              count_header="X-Cache-Tier" if tiers else None)
        cpu_after = system.cpu_snapshot()
        summary = {**result.summary(), **latency_profile(result.latencies_s),
                   "cpu_ms_per_request": self.cpu_per_request(cpu_before, cpu_after, result.completed_total),
                   "gunicorn_workers": stores.worker_split(workers_before, stores.workers_cpu_seconds(master_pid))}
        if tiers:
            summary["x_cache_tier"] = {value or "absent": n for value, n in sorted(result.header_counts.items())}
        return summary, cpu_before, cpu_after

    # Setting up and tearing down

    def setup(self):
        log("creating the system's database, key prefix and vhost, and the anchors' database")
        self.isolation = Isolation.create("bench")
        self.anchor = Isolation.create("anchor")
        extra_env = {}
        if self.tracing:
            self.trace_sink = TraceSink(self.workdir).start()
            extra_env = self.trace_sink.env()
            log(f"tracing on: the system sends its spans over OTLP/HTTP to {self.trace_sink.endpoint}, which drops them")
        self.stack = Stack(self.isolation, self.workdir, extra_env)
        log("starting the five processes of the Procfile and the monolith anchor")
        self.stack.start()
        # Started for the mix only.
        self.stack.add_gateway(SECOND_GATEWAY)
        self.monolith = stores.MonolithApp(self.anchor, self.workdir).start()
        self.anchor_redis = self.anchor.redis()
        self.admin = stores.admin_connection(self.isolation.database_url)
        self.pg = psycopg2.connect(self.isolation.database_url)
        self.pg.autocommit = True
        self.postmaster = stores.postmaster_pid(self.admin)
        self.system = System(self.stack, [self.isolation.redis()], self.postmaster,
                             others={"monolith anchor": lambda: self.monolith.process.pid})
        self.api, self.cache_counters = self.system.api, self.system.counters

    def teardown(self):
        for closing in (lambda: self.pg.close(), lambda: self.admin.close()):
            # Not opened (setup failed before it) or already broken: the rest still stops.
            with contextlib.suppress(AttributeError, psycopg2.Error):
                closing()
        if self.monolith:
            self.monolith.stop()
        if self.stack:
            self.stack.stop()
        if self.trace_sink:
            # After the processes stopped, having sent what they still held.
            self.results["tracing"] = self.trace_sink.stats()
            self.trace_sink.stop()
        for isolation in (self.anchor, self.isolation):
            if isolation:
                isolation.destroy()

    def run(self) -> dict:
        started = time.monotonic()
        self.results["machine"] = machine()
        self.results["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.results["scenarios"] = list(self.scenarios)
        if MAIN_SCENARIOS in self.scenarios:
            try:
                self.setup()
                self.results["setup_s"] = round(time.monotonic() - started, 1)
                for step in plan(self.profile):
                    getattr(self, f"step_{step[0]}")(*step[1:])
            finally:
                self.teardown()
        if SCALING_SCENARIO in self.scenarios:
            # After the main system stopped: B6's stacks have the machine to themselves.
            self.step_b6()
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)
        return self.results

    # Growing the table (B4 at its step)

    def _duplicate(self, api: Api, multiplier: int, size: int) -> tuple[int, float]:
        """Grows the album table to `size` rows through the system's `POST /tasks/duplicate`,
        polling the task every 10 ms: the rows inserted and the seconds until SUCCESS."""
        started = time.perf_counter()
        response = api.post("/tasks/duplicate", json={"multiplier": multiplier})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        while True:
            body = api.get(f"/tasks/{task_id}").json()
            if body["state"] in ("SUCCESS", "FAILURE"):
                break
            if time.perf_counter() - started > self.profile.durable_timeout_s:
                raise TimeoutError(f"duplication not done: {body}")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        if body["state"] != "SUCCESS":
            raise RuntimeError(f"duplication failed: {body}")
        count = api.sql("SELECT count(*), max(album_id) FROM album")[0]
        assert tuple(count) == (size, size), count
        return body["result"]["inserted"], seconds

    def step_grow(self, multiplier: int, size: int, is_b4: bool):
        log(f"duplicating the album table x{multiplier}: {self.table_size} -> {size} rows")
        inserted, system_s = self._duplicate(self.api, multiplier, size)
        anchor_rows, anchor_s = floor.insert_select_copy(self.anchor.database_url, multiplier)
        assert inserted == anchor_rows == size - self.table_size, (inserted, anchor_rows, size, self.table_size)
        self.table_size = size
        self.results["growth"].append({
            "rows_before": size - inserted, "rows_after": size, "multiplier": multiplier,
            "system_s": round(system_s, 3), "system_rows_per_s": round(inserted / system_s, 1),
            "insert_select_s": round(anchor_s, 4), "insert_select_rows_per_s": round(anchor_rows / anchor_s, 1),
        })
        for url in (self.isolation.database_url, self.anchor.database_url):
            stores.analyze(url)
        if is_b4:
            self.results["b4"] = {**self.results["growth"][-1], "inserted": inserted}
            log(f"B4: {inserted / system_s:,.0f} rows/s via the system, {anchor_rows / anchor_s:,.0f} rows/s "
                f"via INSERT ... SELECT")

    # B1: bulk update of every row; B5 is B1 at every size

    def step_b1(self, n: int):
        """The bulk right after the table grew (most rows not cached yet: the cache-aside
        load is part of the acknowledgement), and at headline sizes once more on the same,
        now cached rows."""
        assert n == self.table_size
        headline = n in self.profile.b1_headline
        profile = headline and n == max(self.profile.b1_headline)
        self.results["b1"].append(self._b1_once(n, "cold", profile))
        memory = self.results["b1"][-1]["peak_rss_mb"]
        self.results["memory"].append({"n": n, **{name: m["max_mb"] for name, m in memory.items()}})
        if headline:
            self.results["b1"].append(self._b1_once(n, "warm", profile))

    def _b1_once(self, n: int, cache: str, profile: bool = False) -> dict:
        tag = f"{n}-{cache}-{random.randrange(16**6):06x}"
        floor_rows = [(i, f"floor {tag} {i}") for i in range(1, n + 1)]
        # The floor is the best Redis and Postgres can do: the fastest of a few tries.
        # After the first, the keys exist, as the system's rows do.
        redis_floor = min(floor.redis_pipeline_write(self.anchor_redis, self.anchor.key_prefix, floor_rows)
                          for _ in range(FLOOR_TRIES))
        sql_floor = min(floor.sql_set_update(self.anchor.database_url, floor_rows) for _ in range(FLOOR_TRIES))
        log(f"B1 N={n:,} ({cache} cache): floor {redis_floor:.3f} s Redis pipeline + {sql_floor:.3f} s "
            f"set-based UPDATE")
        # Profiles: with rows not cached, wall-clock along the bulk's path through each
        # process; with rows cached, where each process spends its CPU.
        profiling = self.profiled(f"b1-{n}-{cache}" if profile else None, "wall" if cache == "cold" else "cpu", {
            "gateway": "bulk_update_albums", "cache-svc": "CacheServicer.BulkUpdate",
            "persistence-svc": "PersistenceServicer.ApplyWrites", "write-back-worker": "apply_writes",
            "duplication-worker": "apply_writes"} if cache == "cold" else None)
        peaks_by_request = []

        def after_each_request(requests: int):
            if requests > 1:
                # Whether memory keeps growing with every request of a bulk, or levels off.
                peaks_by_request.append({name: stores.peak_rss_mb(self.stack.processes[name].pid)["max_mb"]
                                         for name in ("gateway", "cache-svc")})
        bulk = self._bulk(self.system, n, tag, profiling, after_each_request)
        memory = {name: stores.peak_rss_mb(process.pid) for name, process in self.stack.processes.items()}
        log(f"B1 N={n:,} ({cache} cache): acknowledged in {bulk['ack_s']:.3f} s, durable in "
            f"{bulk['durable_s']:.3f} s ({bulk['durable_rows_per_s']:,.0f} rows/s); peak RSS of the largest "
            "process of " + ", ".join(f"{k} {v['max_mb']:.0f} MiB" for k, v in memory.items()))
        return {
            "n": n, "cache": cache, "headline": n in self.profile.b1_headline, **bulk,
            "floor_redis_s": round(redis_floor, 4), "floor_sql_s": round(sql_floor, 4),
            "floor_durable_s": round(redis_floor + sql_floor, 4),
            "peak_rss_mb": memory, "peak_rss_mb_by_request": peaks_by_request,
        }

    def _bulk(self, system: System, n: int, tag: str, profiling=None,
              after_each_request=None) -> dict:
        """`POST /albums/bulk` of rows 1..n with titles made from `tag`, in requests of equal
        size: when the last request was acknowledged, when Postgres held every row (each
        value checked), and every process' CPU per row in between. `after_each_request`, if
        given, is called with the number of requests after each one."""
        # Requests of equal size, so B5's memory figures compare N, not request sizes.
        chunk = -(-n // -(-n // self.profile.bulk_chunk))
        bodies = [
            json.dumps({"updates": [{"album_id": i, "title": f"b1 {tag} {i}"}
                                    for i in range(start, min(start + chunk, n + 1))]})
            for start in range(1, n + 1, chunk)
        ]
        sampler = ConvergenceSampler(system.counters, system.stack.isolation.database_url,
                                     system.redis_time_us(), n)
        sampler.start()
        cpu_before = system.cpu_snapshot()
        with profiling or contextlib.nullcontext():
            started = time.perf_counter()
            for body in bodies:
                response = system.api.post("/albums/bulk", data=body, headers={"Content-Type": "application/json"})
                assert response.status_code == 202, response.text[:500]
                if after_each_request is not None:
                    after_each_request(len(bodies))
            ack_s = time.perf_counter() - started
            sampler.mark("ack", ack_s)
            durable_s = sampler.wait_durable(self.profile.durable_timeout_s)
        # CPU per row from sending the bulk until Postgres held every row (the sampler's
        # own Postgres queries count in "postgres").
        cpu = self.cpu_per_request(cpu_before, system.cpu_snapshot(), n)
        sampler.stop()
        wrong = system.api.sql(
            "SELECT count(*) FROM album WHERE title <> 'b1 ' || %s || ' ' || album_id", (tag,)
        )[0][0]
        assert wrong == 0, f"{wrong} rows of {n} do not hold the bulk's value"
        return {
            "requests": len(bodies), "ack_s": round(ack_s, 4), "durable_s": round(durable_s, 4),
            "ack_rows_per_s": round(n / ack_s, 1), "durable_rows_per_s": round(n / durable_s, 1),
            "cpu_ms_per_row": {name: round(ms, 4) for name, ms in cpu.items()}, "series": sampler.series,
        }

    # B2: single updates at concurrency 16

    def step_b2(self):
        for mix in ("uniform", "hot"):
            ids = list(range(1, (self.profile.hot_rows if mix == "hot" else self.table_size) + 1))
            self.results["b2"][mix] = {
                "system": self._b2_system(mix, ids, label=f"b2-{mix}"),
                "write_through": self._b2_write_through(mix, ids),
            }

    def _patches(self, label: str, ids: list[int]):
        choice, counter = random.Random(7).choice, iter(range(1 << 62))

        def next_request():
            return request_bytes("PATCH", f"/albums/{choice(ids)}",
                                 b'{"title": "%s %d"}' % (label.encode(), next(counter)))
        return next_request

    def _b2_system(self, mix: str, ids: list[int], system: System | None = None, duration_s: float | None = None,
                   label: str | None = None) -> dict:
        """Single updates of `ids` through the first gateway of `system` (the main one by
        default) for `duration_s` (B2's by default), then until every one is written back;
        profiled as `label`, if given and profiling was asked for."""
        system = system or self.system
        duration_s = duration_s or self.profile.b2_duration_s
        # Every cache-svc's histograms, summed: whichever one took a worker's acknowledgement observed it.
        cache_ports = list(system.stack.cache_metrics_ports.values())
        persistence_port = system.stack.metrics_ports["PERSISTENCE"]
        database_url = system.stack.isolation.database_url
        time.sleep(self.profile.stats_wait_s)
        accepted_before = system.counters().get("accepted", 0)
        xact_before = stores.xact_commit(self.admin, database_url)
        cache_before = [sample for port in cache_ports for sample in stores.scrape(port)]
        persistence_before = stores.scrape(persistence_port)
        log(f"B2 {mix}: write-back, {self.profile.concurrency} connections for {duration_s:g} s")
        load, cpu_before, _ = self._load(*system.gateway, self._patches(f"b2 {mix}", ids), duration_s,
                                         label=label, system=system)
        drain_started = time.perf_counter()
        system.api.flush(wait_s=120)
        drain_s = time.perf_counter() - drain_started
        # Postgres' work for these updates ends when the last of them is written back.
        postgres_cpu_s = stores.cpu_seconds(system.postmaster) - cpu_before["postgres"] if system.postmaster else None
        time.sleep(self.profile.stats_wait_s)
        accepted = system.counters().get("accepted", 0) - accepted_before
        xacts = stores.xact_commit(self.admin, database_url) - xact_before
        cache_after = [sample for port in cache_ports for sample in stores.scrape(port)]
        persistence_after = stores.scrape(persistence_port)
        statements = metrics.total(persistence_after, "chinook_flush_statements_total") \
            - metrics.total(persistence_before, "chinook_flush_statements_total")
        # Each unary call of persistence-svc is one transaction of its own.
        calls = stores.grpc_server_calls(persistence_after, "PersistenceService") \
            - stores.grpc_server_calls(persistence_before, "PersistenceService")
        lag = stores.histogram_delta(
            stores.histogram_buckets(cache_before, "chinook_accept_to_durable_seconds", entity="album"),
            stores.histogram_buckets(cache_after, "chinook_accept_to_durable_seconds", entity="album"))
        summary = {
            **load,
            "accepted_updates": accepted, "pg_transactions": xacts, "flush_statements": statements,
            "transactions_per_update": round(xacts / accepted, 4) if accepted else None,
            "persistence_calls": calls,
            "persistence_calls_per_update": round(calls / accepted, 4) if accepted else None,
            "lag_rows_cleaned": lag[max(lag)] if lag else 0,
            "lag_p50_s": round_or_none(stores.histogram_quantile(0.5, lag)),
            "lag_p99_s": round_or_none(stores.histogram_quantile(0.99, lag)),
            "lag_p99_bucket_s": stores.bucket_bound(0.99, lag),
            "lag_buckets": {str(k): v for k, v in lag.items()},
            "drain_after_load_s": round(drain_s, 3),
            **per_postgres_core(accepted, postgres_cpu_s),
        }
        log(f"B2 {mix}: write-back {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
            f"p99 {summary['p99_ms']:.1f} ms, lag p99 {summary['lag_p99_s']} s, "
            f"{summary['transactions_per_update']} transactions per update, "
            f"{summary['updates_per_postgres_core_s']} updates per Postgres core-second, {busiest(summary)}")
        return summary

    def _b2_write_through(self, mix: str, ids: list[int]) -> dict:
        xact_before = stores.xact_commit(self.admin, self.anchor.database_url)
        log(f"B2 {mix}: write-through anchor")
        load, cpu_before, cpu_after = self._load(self.monolith.port, self.monolith.process.pid,
                                                 self._patches(f"wt {mix}", ids), self.profile.b2_duration_s)
        postgres_cpu_s = cpu_after["postgres"] - cpu_before["postgres"] if self.postmaster else None
        # A backend publishes its counts when it ends (and, while in use, at most once a
        # second; an idle one keeps them): restart the app so that its connections end.
        self.monolith.stop()
        time.sleep(self.profile.stats_wait_s)
        xacts = stores.xact_commit(self.admin, self.anchor.database_url) - xact_before
        self.monolith.start()
        # Warm-up requests commit too: divide by every request the server handled.
        handled = load["completed_total"]
        summary = {**load, "pg_transactions": xacts,
                   "transactions_per_update": round(xacts / handled, 4) if handled else None,
                   **per_postgres_core(handled, postgres_cpu_s)}
        log(f"B2 {mix}: write-through {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
            f"p99 {summary['p99_ms']:.1f} ms, {summary['updates_per_postgres_core_s']} updates per Postgres "
            f"core-second, {busiest(summary)}")
        return summary

    # B3: cached reads at concurrency 16, with the gateway's near cache on and off

    def _draws(self) -> dict:
        """Makers of the id draws, seeded: the system and the monolith read the same ids."""
        ids = list(range(1, self.table_size + 1))
        return {"uniform": lambda: uniform_chooser(ids, 11), "zipf": lambda: zipf_chooser(ids, ZIPF_S, 11)}

    def step_b3(self):
        """With the near cache on (and warm), uniform reads also presenting the token of a
        write made before, and the monolith."""
        self._fill_monolith_cache()
        b3 = self.results["b3"]
        written = self.api.patch(f"/albums/{self.table_size}", json={"title": "B3 with a token"})
        if written.status_code != 202:
            raise RuntimeError(f"B3: the write whose token the reads present got {written.status_code}: "
                               f"{written.text}")
        warm_up = self._warm_near_cache(list(range(1, self.table_size + 1)))
        for distribution, draw in self._draws().items():
            b3[b3_key("system", distribution)] = {**self._b3_system(distribution, draw(), near=True),
                                                  "near_warm_up": warm_up}
        token = written.headers["X-Consistency-Token"]
        with_token = b3[b3_key("system", "uniform", token=True)] = self._b3_system(
            "uniform", self._draws()["uniform"](), near=True, token=token)
        with_token["cpu_ratio_to_without"] = round(
            cpu_ms(with_token["cpu_ms_per_request"]) / cpu_ms(b3["system"]["cpu_ms_per_request"]), 4)
        log(f"B3 near cache on, uniform: CPU per request with a token / without: {with_token['cpu_ratio_to_without']}")
        for distribution, draw in self._draws().items():
            b3[b3_key("monolith", distribution)] = self._b3_monolith(distribution, draw())

    def step_b3_near_off(self):
        """The gateway restarted without its near cache, then with it again for the rest."""
        self._restart_gateway(near_cache_rows="0")
        try:
            for distribution, draw in self._draws().items():
                self.results["b3"][b3_key("system", distribution, near=False)] = self._b3_system(
                    distribution, draw(), near=False)
        finally:
            self._restart_gateway(near_cache_rows=None)

    def _reads(self, choose, token: str | None = None):
        headers = {"X-Consistency-Token": token} if token else None
        requests = {i: request_bytes("GET", f"/albums/{i}", headers=headers) for i in range(1, self.table_size + 1)}
        return lambda: requests[choose()]

    def _b3_system(self, distribution: str, choose, near: bool, token: str | None = None) -> dict:
        """token: the consistency token every read presents, if any."""
        variant = f"near cache {'on' if near else 'off'}, {distribution}" + (", with a token" if token else "")
        cache_port, gateway_port = self.stack.metrics_ports["CACHE"], self.stack.gateway_port
        if near:
            time.sleep(NEAR_COUNTS_WAIT_S)
        cache_before, gateway_before = stores.scrape(cache_port), stores.scrape(gateway_port)
        log(f"B3 {variant}: reads from the system, {self.profile.concurrency} connections "
            f"for {self.profile.b3_duration_s:g} s")
        label = None if distribution != "uniform" else "b3-token" if token else "b3" if near else "b3-near-off"
        summary = self._load(gateway_port, self.stack.processes["gateway"].pid, self._reads(choose, token),
                             self.profile.b3_duration_s, label=label, tiers=True)[0]
        if near:
            time.sleep(NEAR_COUNTS_WAIT_S)
        cache_after, gateway_after = stores.scrape(cache_port), stores.scrape(gateway_port)
        hits, misses = (metrics.total(cache_after, "chinook_cache_reads_total", result=result)
                        - metrics.total(cache_before, "chinook_cache_reads_total", result=result)
                        for result in ("hit", "miss"))
        summary.update({
            "distribution": distribution, "near_cache": "on" if near else "off", "token": bool(token),
            # cache-svc's reads: with a warm near cache there may be none.
            "cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            **near_cache_counts(gateway_before, gateway_after),
        })
        log(f"B3 {variant}: system {summary['throughput_rps']:,.0f} req/s, p99 {summary['p99_ms']:.1f} ms, "
            f"near hit ratio {summary['near_hit_ratio']}, X-Cache-Tier {summary['x_cache_tier']}, {busiest(summary)}")
        return summary

    def _b3_monolith(self, distribution: str, choose) -> dict:
        log(f"B3 {distribution}: reads from the monolith, {self.profile.concurrency} connections "
            f"for {self.profile.b3_duration_s:g} s")
        summary = self._load(self.monolith.port, self.monolith.process.pid, self._reads(choose),
                             self.profile.b3_duration_s)[0]
        summary["distribution"] = distribution
        log(f"B3 {distribution}: monolith {summary['throughput_rps']:,.0f} req/s, p99 {summary['p99_ms']:.1f} ms, "
            f"{busiest(summary)}")
        return summary

    def _warm_near_cache(self, ids: list[int]) -> dict:
        """Reads every row through each worker process of the gateway, so that every near
        cache holds them all."""
        port = self.stack.gateway_port
        workers = descendants(self.stack.processes["gateway"].pid)
        started = time.perf_counter()
        sweep = run_sweep(port, [f"/albums/{i}" for i in ids], lambda ports: stores.connection_owners(workers, port),
                          len(workers), self.profile.concurrency, count_header="X-Cache-Tier")
        sweep = {"workers": len(workers), **sweep, "seconds": round(time.perf_counter() - started, 3),
                 "header_counts": {value or "absent": n for value, n in sorted(sweep["header_counts"].items())}}
        log(f"near cache of the gateway: {len(ids):,} rows read through {sweep['processes_reached']} of "
            f"{len(workers)} workers ({sweep['requests']:,} reads in {sweep['seconds']:.1f} s, "
            f"X-Cache-Tier {sweep['header_counts']})")
        return sweep

    def _restart_gateway(self, near_cache_rows: str | None):
        """Restarts the first gateway with its near cache as the stack runs it (None), or
        holding this many rows."""
        self.stack.stop("gateway")
        if near_cache_rows is None:
            self.stack.process_env.get("gateway", {}).pop(NEAR_CACHE_ROWS, None)
        else:
            self.stack.configure("gateway", **{NEAR_CACHE_ROWS: near_cache_rows})
        self.stack.start("gateway")
        log(f"gateway restarted with {NEAR_CACHE_ROWS}={near_cache_rows or 'as configured'}")

    def _fill_monolith_cache(self):
        """The monolith reads from a warm cache, as the system does after B1 and B2."""
        rows = psycopg2.connect(self.anchor.database_url)
        try:
            with rows, rows.cursor() as cur:
                cur.execute("SELECT album_id, title, artist_id FROM album")
                records = cur.fetchall()
        finally:
            rows.close()
        with self.anchor_redis.pipeline(transaction=False) as pipe:
            for album_id, title, artist_id in records:
                key = f"{self.anchor.key_prefix}album:{album_id}"
                pipe.hset(key, mapping={"title": title, "artist_id": str(artist_id)})
                pipe.expire(key, 3600)
            pipe.execute()

    # A read-mostly mix: 95 % GET, 5 % PATCH, Zipf-skewed ids

    def step_mix(self):
        ids = list(range(1, self.table_size + 1))
        mix_ids, probe_ids = ids[:-PROBE_ROWS], ids[-PROBE_ROWS:]
        self.stack.start(SECOND_GATEWAY)
        try:
            self.results["mix"]["system"], self.results["mix"]["stale_probe"] = self._mix_system(mix_ids, probe_ids)
        finally:
            self.stack.stop(SECOND_GATEWAY)
        self.results["mix"]["monolith"] = self._mix_monolith(mix_ids)

    def _mix_requests(self, label: str, ids: list[int]):
        choose, draw, counter = zipf_chooser(ids, ZIPF_S, 13), random.Random(17).random, iter(range(1 << 62))
        gets = {i: request_bytes("GET", f"/albums/{i}") for i in ids}
        prefix = label.encode()

        def next_request():
            album_id = choose()
            if draw() < MIX_PATCH_SHARE:
                return request_bytes("PATCH", f"/albums/{album_id}", b'{"title": "%s %d"}' % (prefix, next(counter)))
            return gets[album_id]
        return next_request

    def _mix_system(self, mix_ids: list[int], probe_ids: list[int]) -> tuple[dict, dict]:
        """The mix through the first gateway, while the stale-read probe writes its own
        rows through it and reads them through the second."""
        # B3 left every row in the near cache of each of the first gateway's workers.
        gateway_port, second_port = self.stack.gateway_port, self.stack.gateway_ports[SECOND_GATEWAY]
        second_workers = descendants(self.stack.processes[SECOND_GATEWAY].pid)
        accepted_before = self.cache_counters().get("accepted", 0)
        time.sleep(NEAR_COUNTS_WAIT_S)
        gateway_before, second_before = stores.scrape(gateway_port), stores.scrape(second_port)
        probe = StaleReadProbe(
            gateway_port, second_port, len(second_workers),
            lambda ports: stores.connection_owners(second_workers, second_port), probe_ids,
            bound_s=STALE_BOUND_S, interval_s=PROBE_INTERVAL_S, poll_s=PROBE_POLL_S,
            prime_reads=PROBE_PRIME_READS, give_up_s=PROBE_GIVE_UP_S)
        log(f"mix: {1 - MIX_PATCH_SHARE:.0%} GET / {MIX_PATCH_SHARE:.0%} PATCH through the system, "
            f"{self.profile.concurrency} connections for {self.profile.mix_duration_s:g} s; stale-read probe "
            f"through {SECOND_GATEWAY}")
        probe.start()
        try:
            summary = self._load(gateway_port, self.stack.processes["gateway"].pid,
                                 self._mix_requests("mix system", mix_ids), self.profile.mix_duration_s,
                                 label="mix", tiers=True)[0]
        finally:
            probed = probe.stop()
        time.sleep(NEAR_COUNTS_WAIT_S)
        gateway_after, second_after = stores.scrape(gateway_port), stores.scrape(second_port)
        self.api.flush(wait_s=120)
        delay = stores.histogram_delta(
            stores.histogram_buckets(second_before, "chinook_near_cache_invalidation_delay_seconds"),
            stores.histogram_buckets(second_after, "chinook_near_cache_invalidation_delay_seconds"))
        probed.update({
            "second_gateway": SECOND_GATEWAY,
            # From a change in Redis to its arrival in a process of the second gateway, every row's.
            "invalidations_timed": delay[max(delay)] if delay else 0,
            "invalidation_delay_p50_s": round_or_none(stores.histogram_quantile(0.5, delay), 5),
            "invalidation_delay_p99_s": round_or_none(stores.histogram_quantile(0.99, delay), 5),
        })
        summary.update({
            "distribution": "zipf", "zipf_s": ZIPF_S, "patch_share": MIX_PATCH_SHARE,
            "accepted_updates": self.cache_counters().get("accepted", 0) - accepted_before,
            **near_cache_counts(gateway_before, gateway_after),
        })
        log(f"mix: system {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
            f"p99 {summary['p99_ms']:.1f} ms, near hit ratio {summary['near_hit_ratio']}, {busiest(summary)}")
        log(f"mix: {probed['probes']} probes, visible after p50 {probed['visibility_p50_ms']} ms, "
            f"p99 {probed['visibility_p99_ms']} ms, max {probed['visibility_max_ms']} ms; "
            f"{probed['stale_reads_after_bound']} stale reads after {STALE_BOUND_S:g} s"
            + (f"; probe failed: {probed['error']}" if probed["error"] else ""))
        return summary, probed

    def _mix_monolith(self, mix_ids: list[int]) -> dict:
        log("mix: through the monolith (write-through PATCH, GET from Redis)")
        summary = self._load(self.monolith.port, self.monolith.process.pid,
                             self._mix_requests("mix monolith", mix_ids), self.profile.mix_duration_s)[0]
        summary.update({"distribution": "zipf", "zipf_s": ZIPF_S, "patch_share": MIX_PATCH_SHARE})
        log(f"mix: monolith {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
            f"p99 {summary['p99_ms']:.1f} ms, {busiest(summary)}")
        return summary


    # B6: B1 and B2 on a single Redis and on a Redis Cluster, with one and two cache-svc,
    # without and with WAIT

    def step_b6(self):
        """For each configuration a stack of its own (database, key prefix, vhost) over
        private Redis servers, started for it and stopped after: B1 at the B2 size (first to
        cache the rows, then measured on them) and B2 with uniform single updates."""
        settings = load_settings()
        with redis.Redis.from_url(settings.redis_url, decode_responses=True) as bench_redis:
            appendfsync, bench_persistence = b6_appendfsync(bench_redis)
        # The main run's connection closed with its stack, if it ran.
        self.admin = stores.admin_connection(settings.database_url)
        try:
            b6 = self.results["b6"] = {
                "rows": self.profile.load_size, "b2_duration_s": self.profile.b6_duration_s,
                "concurrency": self.profile.concurrency,
                "redis_server": _command_version("redis-server", "--version"),
                "bench_redis_persistence": bench_persistence,
                "private_redis_persistence": {"appendonly": "yes", "appendfsync": appendfsync},
                "cluster": {"masters": CLUSTER_MASTERS, "replicas_per_master": CLUSTER_REPLICAS_PER_MASTER,
                            "node_timeout_ms": CLUSTER_NODE_TIMEOUT_MS},
                "configs": [],
            }
            log(f"B6: {len(B6_CONFIGS)} configurations, private Redis servers with appendonly yes, "
                f"appendfsync {appendfsync} (the bench's Redis: {bench_persistence})")
            postmaster = stores.postmaster_pid(self.admin)
            for config in B6_CONFIGS:
                b6["configs"].append(self._b6_config(config, appendfsync, postmaster))
        finally:
            self.admin.close()

    def _b6_config(self, config: ScalingConfig, appendfsync: str, postmaster: int | None) -> dict:
        name = f"B6 ({config.key}) {config.label}"
        n = self.profile.load_size
        multiplier, rest = divmod(n, BASE_ALBUMS)
        if rest or not (multiplier == 1 or 2 <= multiplier <= 64):
            raise ValueError(f"B6 cannot grow the album table from {BASE_ALBUMS} to {n} rows by duplication")
        started = time.monotonic()
        workdir = self.workdir / f"b6{config.key}"
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
                self._duplicate(system.api, multiplier, n)
                stores.analyze(isolation.database_url)
            setup_s = time.monotonic() - started
            bulks = {}
            for cache in ("cold", "warm"):
                tag = f"{n}-b6{config.key}-{cache}-{random.randrange(16**6):06x}"
                bulk = bulks[cache] = self._bulk(system, n, tag)
                bulk.pop("series")
                log(f"{name}: B1 N={n:,} ({cache} cache) acknowledged in {bulk['ack_s']:.3f} s, durable in "
                    f"{bulk['durable_s']:.3f} s ({bulk['durable_rows_per_s']:,.0f} rows/s), "
                    f"{1000 * cpu_ms(bulk['cpu_ms_per_row']):.0f} µs CPU per row")
            updates = self._b2_system("uniform", list(range(1, n + 1)), system, self.profile.b6_duration_s)
            # That the configuration ran as named: calls each cache-svc answered, and WAITs
            # Redis ran, over the whole run.
            calls = {replica: stores.grpc_server_calls(stores.scrape(port), "CacheService")
                     for replica, port in stack.cache_metrics_ports.items()}
            waits = sum(stores.redis_command_calls(node, "wait") for node in nodes)
        return {**asdict(config), "redis_servers": len(ports), "cache_svc_calls": calls, "redis_wait_calls": waits,
                "setup_s": round(setup_s, 1), "elapsed_s": round(time.monotonic() - started, 1),
                "b1": bulks, "b2_uniform": updates, "summary": b6_summary(bulks["warm"], updates)}


class ConvergenceSampler:
    """During a B1, over time: rows the cache accepted and rows the workers reported
    written (cache-svc's own counters in Redis, every 20 ms), and rows Postgres holds
    (wb_version at or above the first version of the bulk; a count over the table, so
    polled at most a twentieth of the time). Durable is when Postgres holds every row:
    cache-svc counts a row as written only after its transaction committed, so the first
    time its counter reaches N, confirmed by Postgres, is a close upper bound."""

    REDIS_POLL_S = 0.02
    PG_POLL_MIN_S = 0.25

    def __init__(self, counters, database_url: str, since_version: int, n: int):
        self.counters = counters
        self.since_version = since_version
        self.n = n
        self.conn = psycopg2.connect(database_url)
        self.conn.autocommit = True
        self.base = self._counters()
        self.series = {"t": [], "cache_rows": [], "written_rows": [], "pg_t": [], "pg_rows": [], "marks": {}}
        self._stop = threading.Event()
        self._durable = threading.Event()
        self._durable_at = None
        self._thread = threading.Thread(target=self._run, name="convergence", daemon=True)
        self._started = None

    def _counters(self) -> tuple[int, int]:
        counters = self.counters()
        return counters.get("accepted", 0), counters.get("flushed", 0)

    def start(self):
        self._started = time.perf_counter()
        self._thread.start()

    def mark(self, name: str, at_s: float):
        self.series["marks"][name] = round(at_s, 4)

    def _pg_rows(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM album WHERE wb_version >= %s", (self.since_version,))
            return cur.fetchone()[0]

    def _run(self):
        written_all_at = None
        next_pg, pg_cost = 0.0, 0.0
        while not self._stop.is_set():
            t = time.perf_counter() - self._started
            accepted, flushed = self._counters()
            written = flushed - self.base[1]
            self.series["t"].append(round(t, 4))
            self.series["cache_rows"].append(min(accepted - self.base[0], self.n))
            self.series["written_rows"].append(min(written, self.n))
            if written >= self.n and written_all_at is None:
                written_all_at = t
            if t >= next_pg or (written_all_at is not None):
                query_started = time.perf_counter() - self._started
                pg_rows = self._pg_rows()
                pg_cost = time.perf_counter() - self._started - query_started
                self.series["pg_t"].append(round(query_started, 4))
                self.series["pg_rows"].append(pg_rows)
                if pg_rows >= self.n:
                    # The query saw every row: they committed before it began, and before
                    # cache-svc counted them.
                    self._durable_at = min(query_started, written_all_at or query_started)
                    self._durable.set()
                    return
                next_pg = query_started + max(self.PG_POLL_MIN_S, 19 * pg_cost)
            self._stop.wait(self.REDIS_POLL_S)

    def wait_durable(self, timeout_s: float) -> float:
        if not self._durable.wait(timeout_s):
            raise TimeoutError(f"Postgres holds {self.series['pg_rows'][-1:]} of {self.n} rows after {timeout_s} s")
        self.mark("durable", self._durable_at)
        return self._durable_at

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.conn.close()


def latency_profile(latencies: list[float]) -> dict:
    """Percentiles 0-100 in ms, for the latency plots."""
    if not latencies:
        return {"percentiles_ms": []}
    ordered = sorted(latencies)
    return {"percentiles_ms": [round(percentile(ordered, q) * 1000, 3) for q in
                               [*range(100), 99.5, 99.9, 100]]}


def cpu_ms(per_unit: dict) -> float:
    """The CPU per row or request of every process, the load generator left out."""
    return sum(ms for name, ms in per_unit.items() if name != "load generator")


def b6_summary(bulk: dict, updates: dict) -> dict:
    """What docs quote of a B6 configuration: B1 on cached rows and B2 uniform, with each
    component's CPU per row (µs) and per request (ms) and their sum, the load generator
    left out."""
    per_row = {name: round(1000 * ms, 1) for name, ms in bulk["cpu_ms_per_row"].items() if name != "load generator"}
    per_request = {name: ms for name, ms in updates["cpu_ms_per_request"].items() if name != "load generator"}
    return {
        "b1_ack_s": bulk["ack_s"], "b1_durable_s": bulk["durable_s"],
        "b1_ack_rows_per_s": bulk["ack_rows_per_s"], "b1_durable_rows_per_s": bulk["durable_rows_per_s"],
        "b1_cpu_us_per_row": {**per_row, "all": round(1000 * cpu_ms(bulk["cpu_ms_per_row"]), 1)},
        "b2_throughput_rps": updates["throughput_rps"], "b2_p50_ms": updates["p50_ms"],
        "b2_p99_ms": updates["p99_ms"], "b2_errors": updates["errors"],
        "b2_cpu_ms_per_request": {**per_request, "all": round(cpu_ms(updates["cpu_ms_per_request"]), 4)},
    }


def b6_appendfsync(client: redis.Redis) -> tuple[str, dict]:
    """The appendfsync of B6's private Redis servers, which keep an append-only file (as
    tests/support/stores.py starts them), and the bench's own Redis' settings: its
    appendfsync if it keeps an append-only file too; if not, "no" (written, but never
    fsynced by Redis), the nearest a server with one comes to none."""
    settings = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    return (settings["appendfsync"] if settings["appendonly"] == "yes" else "no"), settings


def round_or_none(value, digits: int = 4):
    return None if value is None else round(value, digits)


def b3_key(target: str, distribution: str, near: bool = True, token: bool = False) -> str:
    """"system", "system_zipf", "system_token", "system_near_off", "system_near_off_zipf",
    "monolith", "monolith_zipf": B3 keeps its first keys for the uniform reads, near cache on."""
    return target + ("" if near else "_near_off") + ("_token" if token else "") + (
        "" if distribution == "uniform" else f"_{distribution}")


def near_cache_counts(before: list, after: list) -> dict:
    """The gateway's near-cache counters over a run (zero where it has none)."""
    counts = {f"near_{name}": int(metrics.total(after, f"chinook_near_cache_{name}_total")
                                  - metrics.total(before, f"chinook_near_cache_{name}_total"))
              for name in NEAR_COUNTERS}
    looked_up = counts["near_hits"] + counts["near_misses"]
    counts["near_hit_ratio"] = round(counts["near_hits"] / looked_up, 4) if looked_up else None
    return counts


def per_postgres_core(updates: int, postgres_cpu_s: float | None) -> dict:
    """Postgres CPU per update, and how many updates one Postgres core takes a second at
    that cost (None when Postgres is not on this machine or used less than a clock tick)."""
    if not updates or not postgres_cpu_s or postgres_cpu_s <= 0:
        return {"postgres_cpu_ms_per_update": None, "updates_per_postgres_core_s": None}
    return {"postgres_cpu_ms_per_update": round(1000 * postgres_cpu_s / updates, 5),
            "updates_per_postgres_core_s": round(updates / postgres_cpu_s, 1)}


def busiest(summary: dict) -> str:
    split = summary["gunicorn_workers"]
    share = split["largest_share"]
    return f"busiest of {split['workers']} workers " + ("-" if share is None else f"{share:.0%} of their CPU")


def _command_version(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine() -> dict:
    settings = load_settings()
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    conn = stores.admin_connection(settings.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            postgres = cur.fetchone()[0]
            cur.execute("SHOW synchronous_commit")
            synchronous_commit = cur.fetchone()[0]
    finally:
        conn.close()
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "cores": os.cpu_count(), "cpu": cpu_model, "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "postgres_server": postgres, "postgres_synchronous_commit": synchronous_commit,
        "redis_server": redis.Redis.from_url(settings.redis_url).info("server")["redis_version"],
        "rabbitmq_server": _command_version("rabbitmqctl", "--quiet", "version"),
        "packages": {name: version(name) for name in
                     ("gunicorn", "flask", "grpcio", "protobuf", "celery", "redis", "psycopg2-binary")},
        "loadavg_start": os.getloadavg(),
    }
