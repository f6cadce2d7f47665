"""B2: single updates (`PATCH /albums/<id>`) at the profile's concurrency, uniform over the
table and on a few hot rows, through the system and through the write-through anchor,
under granian as the gateway is and under gunicorn."""

import random
import time
from typing import TYPE_CHECKING

from testkit import metrics

from .. import stores
from ..load import request_bytes
from ..measure import System, busiest, log, measure_load, per_postgres_core, round_or_none
from ..profiles import Profile

if TYPE_CHECKING:
    from ..run import Bench


def run(bench: "Bench"):
    for mix in ("uniform", "hot"):
        ids = list(range(1, (bench.profile.hot_rows if mix == "hot" else bench.table_size) + 1))
        bench.results["b2"][mix] = {
            "system": system_updates(bench.profile, bench.system, bench.admin, mix, ids,
                                     profiling=bench.profiled(f"b2-{mix}")),
            "write_through": write_through_updates(bench, mix, ids),
            "write_through_gunicorn": anchor_updates(bench, bench.monolith_gunicorn, mix, ids),
        }


def patches(label: str, ids: list[int]):
    choice, counter = random.Random(7).choice, iter(range(1 << 62))

    def next_request():
        return request_bytes("PATCH", f"/albums/{choice(ids)}",
                             b'{"title": "%s %d"}' % (label.encode(), next(counter)))
    return next_request


def system_updates(profile: Profile, system: System, admin, mix: str, ids: list[int],
                   duration_s: float | None = None, profiling=None) -> dict:
    """Single updates of `ids` through the first gateway of `system` for `duration_s` (B2's
    by default), then until every one is written back; run in `profiling`, if given.
    `admin` is a connection to the Postgres server, which counts the transactions."""
    duration_s = duration_s or profile.b2_duration_s
    # Every cache-svc's histograms, summed: whichever one took a worker's acknowledgement observed it.
    cache_ports = list(system.stack.cache_metrics_ports.values())
    persistence_port = system.stack.metrics_ports["PERSISTENCE"]
    database_url = system.stack.isolation.database_url
    time.sleep(profile.stats_wait_s)
    accepted_before = system.counters().get("accepted", 0)
    xact_before = stores.xact_commit(admin, database_url)
    cache_before = [sample for port in cache_ports for sample in stores.scrape(port)]
    persistence_before = stores.scrape(persistence_port)
    log(f"B2 {mix}: write-back, {profile.concurrency} connections for {duration_s:g} s")
    load, cpu_before, _ = measure_load(profile, system, *system.gateway, patches(f"b2 {mix}", ids), duration_s,
                                       profiling)
    drain_started = time.perf_counter()
    system.api.flush(wait_s=120)
    drain_s = time.perf_counter() - drain_started
    # Postgres' work for these updates ends when the last of them is written back.
    postgres_cpu_s = stores.cpu_seconds(system.postmaster) - cpu_before["postgres"] if system.postmaster else None
    time.sleep(profile.stats_wait_s)
    accepted = system.counters().get("accepted", 0) - accepted_before
    xacts = stores.xact_commit(admin, database_url) - xact_before
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


def anchor_updates(bench: "Bench", anchor: stores.MonolithApp, mix: str, ids: list[int]) -> dict:
    """The load through an anchor, with its server's CPU per request."""
    log(f"B2 {mix}: write-through anchor under {anchor.server}")
    load, cpu_before, cpu_after = measure_load(bench.profile, bench.system, anchor.port, anchor.process.pid,
                                               patches(f"wt {anchor.server} {mix}", ids), bench.profile.b2_duration_s)
    log(f"B2 {mix}: write-through under {anchor.server} {load['throughput_rps']:,.0f} req/s, "
        f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, {busiest(load)}")
    return {**load, "server": anchor.server, "server_process": anchor.name,
            "postgres_cpu_s": cpu_after["postgres"] - cpu_before["postgres"] if bench.postmaster else None}


def write_through_updates(bench: "Bench", mix: str, ids: list[int]) -> dict:
    """anchor_updates under the gateway's server, with the Postgres transactions counted."""
    xact_before = stores.xact_commit(bench.admin, bench.anchor.database_url)
    load = anchor_updates(bench, bench.monolith, mix, ids)
    # A backend publishes its counts when it ends (and, while in use, at most once a
    # second; an idle one keeps them): restart the app so that its connections end.
    bench.monolith.stop()
    time.sleep(bench.profile.stats_wait_s)
    xacts = stores.xact_commit(bench.admin, bench.anchor.database_url) - xact_before
    bench.monolith.start()
    # Warm-up requests commit too: divide by every request the server handled.
    handled = load["completed_total"]
    summary = {**load, "pg_transactions": xacts,
               "transactions_per_update": round(xacts / handled, 4) if handled else None,
               **per_postgres_core(handled, load["postgres_cpu_s"])}
    log(f"B2 {mix}: write-through {summary['updates_per_postgres_core_s']} updates per Postgres core-second")
    return summary
