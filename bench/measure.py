"""What the scenarios measure with: a running system and the CPU of its processes, a
closed-loop load against one of its HTTP servers, and the figures derived from them."""

import contextlib
import resource
import subprocess
import time
from collections.abc import Callable

import redis

from testkit import metrics
from testkit.api import Api
from testkit.stack import Stack

from . import stores
from .load import percentile, run_load
from .profiles import Profile

NEAR_COUNTERS = ("hits", "misses", "evictions", "invalidations", "reconnects")
# Gateway processes publish their near-cache counts in batches, up to a quarter second
# late: read them after this pause.
NEAR_COUNTS_WAIT_S = 0.5


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
        """The first gateway's port and the pid of its granian main process."""
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


def cpu_per_request(before: dict, after: dict, requests: int) -> dict:
    """CPU milliseconds per request of each component that used any."""
    spent = {name: after[name] - before[name] for name in before if name in after}
    return {name: round(1000 * seconds / requests, 4) for name, seconds in spent.items()
            if seconds > 0.005} if requests else {}


def measure_load(profile: Profile, system: System, port: int, master_pid: int, next_request, duration_s: float,
                 profiling=None, tiers: bool = False) -> tuple[dict, dict, dict]:
    """A closed-loop load at the profile's concurrency against an HTTP server: its
    summary with latency percentiles, CPU per request of every component of `system` and
    how the server's workers shared their CPU (X-Cache-Tier counts if `tiers`), and the CPU
    snapshots before and after. `profiling`, if given, is the context the load runs in."""
    workers_before = stores.workers_cpu_seconds(master_pid)
    cpu_before = system.cpu_snapshot()
    with profiling or contextlib.nullcontext():
        result = run_load(port, next_request, profile.concurrency, duration_s, profile.warmup_s,
                          count_header="X-Cache-Tier" if tiers else None)
    cpu_after = system.cpu_snapshot()
    summary = {**result.summary(), **latency_profile(result.latencies_s),
               "cpu_ms_per_request": cpu_per_request(cpu_before, cpu_after, result.completed_total),
               "server_workers": stores.worker_split(workers_before, stores.workers_cpu_seconds(master_pid))}
    if tiers:
        summary["x_cache_tier"] = {value or "absent": n for value, n in sorted(result.header_counts.items())}
    return summary, cpu_before, cpu_after


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


def round_or_none(value, digits: int = 4):
    return None if value is None else round(value, digits)


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
    split = summary["server_workers"]
    share = split["largest_share"]
    return f"busiest of {split['workers']} workers " + ("-" if share is None else f"{share:.0%} of their CPU")


def command_version(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"
