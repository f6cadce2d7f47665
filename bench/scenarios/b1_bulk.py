"""B1: `POST /albums/bulk` of every row of the table, against its floor (one Redis pipeline
and one set-based UPDATE of the same rows); B5 is B1 at every size of the profile."""

import contextlib
import json
import random
import time
from typing import TYPE_CHECKING

from .. import stores
from ..anchors import floor
from ..convergence import ConvergenceSampler
from ..measure import System, cpu_per_request, log
from ..profiles import Profile

if TYPE_CHECKING:
    from ..run import Bench

FLOOR_TRIES = 3


def run(bench: "Bench", n: int):
    """The bulk right after the table grew (most rows not cached yet: the cache-aside
    load is part of the acknowledgement), and at headline sizes once more on the same,
    now cached rows."""
    assert n == bench.table_size
    headline = n in bench.profile.b1_headline
    profile = headline and n == max(bench.profile.b1_headline)
    bench.results["b1"].append(bulk_against_floor(bench, n, "cold", profile))
    memory = bench.results["b1"][-1]["peak_rss_mb"]
    bench.results["memory"].append({"n": n, **{name: m["max_mb"] for name, m in memory.items()}})
    if headline:
        bench.results["b1"].append(bulk_against_floor(bench, n, "warm", profile))


def bulk_against_floor(bench: "Bench", n: int, cache: str, profile: bool = False) -> dict:
    tag = f"{n}-{cache}-{random.randrange(16**6):06x}"
    floor_rows = [(i, f"floor {tag} {i}") for i in range(1, n + 1)]
    # The floor is the best Redis and Postgres can do: the fastest of a few tries.
    # After the first, the keys exist, as the system's rows do.
    redis_floor = min(floor.redis_pipeline_write(bench.anchor_redis, bench.anchor.key_prefix, floor_rows)
                      for _ in range(FLOOR_TRIES))
    sql_floor = min(floor.sql_set_update(bench.anchor.database_url, floor_rows) for _ in range(FLOOR_TRIES))
    log(f"B1 N={n:,} ({cache} cache): floor {redis_floor:.3f} s Redis pipeline + {sql_floor:.3f} s "
        f"set-based UPDATE")
    # Profiles: with rows not cached, wall-clock along the bulk's path through each
    # process; with rows cached, where each process spends its CPU.
    profiling = bench.profiled(f"b1-{n}-{cache}" if profile else None, "wall" if cache == "cold" else "cpu", {
        "gateway": "bulk_update_albums", "cache-svc": "CacheServicer.BulkUpdate",
        "persistence-svc": "PersistenceServicer.ApplyWrites", "write-back-worker": "apply_writes",
        "duplication-worker": "apply_writes"} if cache == "cold" else None)
    peaks_by_request = []

    def after_each_request(requests: int):
        if requests > 1:
            # Whether memory keeps growing with every request of a bulk, or levels off.
            peaks_by_request.append({name: stores.peak_rss_mb(bench.stack.processes[name].pid)["max_mb"]
                                     for name in ("gateway", "cache-svc")})
    result = bulk(bench.profile, bench.system, n, tag, profiling, after_each_request)
    memory = {name: stores.peak_rss_mb(process.pid) for name, process in bench.stack.processes.items()}
    log(f"B1 N={n:,} ({cache} cache): acknowledged in {result['ack_s']:.3f} s, durable in "
        f"{result['durable_s']:.3f} s ({result['durable_rows_per_s']:,.0f} rows/s); peak RSS of the largest "
        "process of " + ", ".join(f"{k} {v['max_mb']:.0f} MiB" for k, v in memory.items()))
    return {
        "n": n, "cache": cache, "headline": n in bench.profile.b1_headline, **result,
        "floor_redis_s": round(redis_floor, 4), "floor_sql_s": round(sql_floor, 4),
        "floor_durable_s": round(redis_floor + sql_floor, 4),
        "peak_rss_mb": memory, "peak_rss_mb_by_request": peaks_by_request,
    }


def bulk(profile: Profile, system: System, n: int, tag: str, profiling=None, after_each_request=None) -> dict:
    """`POST /albums/bulk` of rows 1..n with titles made from `tag`, in requests of equal
    size: when the last request was acknowledged, when Postgres held every row (each
    value checked), and every process' CPU per row in between. `after_each_request`, if
    given, is called with the number of requests after each one."""
    # Requests of equal size, so B5's memory figures compare N, not request sizes.
    chunk = -(-n // -(-n // profile.bulk_chunk))
    bodies = [
        json.dumps({"updates": [{"album_id": i, "title": f"b1 {tag} {i}"}
                                for i in range(start, min(start + chunk, n + 1))]})
        for start in range(1, n + 1, chunk)
    ]
    sampler = ConvergenceSampler(system.counters, system.stack.isolation.database_url,
                                 system.redis_time_us(), n)
    sampler.start()
    cpu_before = system.cpu_snapshot()
    sampler_cpu_before = sampler.postgres_cpu_s()
    with profiling or contextlib.nullcontext():
        started = time.perf_counter()
        for body in bodies:
            response = system.api.post("/albums/bulk", data=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 202, response.text[:500]
            if after_each_request is not None:
                after_each_request(len(bodies))
        ack_s = time.perf_counter() - started
        sampler.mark("ack", ack_s)
        durable_s = sampler.wait_durable(profile.durable_timeout_s)
    # CPU per row from sending the bulk until Postgres held every row. The sampler's
    # counts of the table are the bench's own work: its backend's CPU is left out of
    # Postgres'.
    cpu_after = system.cpu_snapshot()
    if "postgres" in cpu_after:
        cpu_after["postgres"] -= sampler.postgres_cpu_s() - sampler_cpu_before
    cpu = cpu_per_request(cpu_before, cpu_after, n)
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
