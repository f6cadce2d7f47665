"""B3: cached reads (`GET /albums/<id>`) at the profile's concurrency, uniform and
Zipf-skewed, through the system with the gateway's near cache on and off (and with a
consistency token), and through the monolith anchor reading its own cache, under granian
as the gateway is and under gunicorn. With the near cache on, the system and the
anchor under granian are measured the profile's b3_rounds times in a row, each round its own
ratio."""

import time
from typing import TYPE_CHECKING

import psycopg2

from testkit import metrics
from testkit.stores import descendants

from .. import stores
from ..load import ZIPF_S, request_bytes, run_sweep, uniform_chooser, zipf_chooser
from ..measure import NEAR_COUNTS_WAIT_S, busiest, cpu_ms, log, measure_load, near_cache_counts

if TYPE_CHECKING:
    from ..run import Bench

NEAR_CACHE_ROWS = "GATEWAY_NEAR_CACHE_ROWS"


def run(bench: "Bench"):
    """With the near cache on (and warm), the profile's rounds against the monolith under granian,
    each with uniform reads also presenting the token of a write made before, then the
    monolith under gunicorn."""
    fill_monolith_cache(bench)
    b3 = bench.results["b3"]
    written = bench.api.patch(f"/albums/{bench.table_size}", json={"title": "B3 with a token"})
    if written.status_code != 202:
        raise RuntimeError(f"B3: the write whose token the reads present got {written.status_code}: "
                           f"{written.text}")
    warm_up = warm_near_cache(bench, list(range(1, bench.table_size + 1)))
    token = written.headers["X-Consistency-Token"]
    b3["rounds"] = [near_cache_round(bench, number, warm_up, token) for number in range(1, bench.profile.b3_rounds + 1)]
    # The first round's figures are the ones the other comparisons use.
    b3.update(b3["rounds"][0])
    for distribution, draw in draws(bench.table_size).items():
        b3[b3_key("monolith_gunicorn", distribution)] = monolith_reads(bench, bench.monolith_gunicorn,
                                                                       distribution, draw())


def near_cache_round(bench: "Bench", number: int, warm_up: dict, token: str) -> dict:
    """The system (near cache on) then the monolith under granian, uniform then Zipf; right
    after the system's uniform reads, the same reads presenting `token`, so that each round
    sets them against reads a load apart (one load costs up to a third more or less than
    the next on a shared VM)."""
    measured = {}
    for distribution, draw in draws(bench.table_size).items():
        system = measured[b3_key("system", distribution)] = {
            **system_reads(bench, distribution, draw(), near=True, profiled=number == 1), "near_warm_up": warm_up}
        if distribution == "uniform":
            with_token = measured[b3_key("system", distribution, token=True)] = system_reads(
                bench, distribution, draw(), near=True, token=token, profiled=number == 1)
            with_token["cpu_ratio_to_without"] = round(
                cpu_ms(with_token["cpu_ms_per_request"]) / cpu_ms(system["cpu_ms_per_request"]), 4)
            log(f"B3 near cache on, uniform, round {number} of {bench.profile.b3_rounds}: CPU per request with a token / "
                f"without: {with_token['cpu_ratio_to_without']}")
        monolith = measured[b3_key("monolith", distribution)] = monolith_reads(bench, bench.monolith, distribution,
                                                                               draw())
        log(f"B3 near cache on, {distribution}, round {number} of {bench.profile.b3_rounds}: system / monolith "
            f"{system['throughput_rps'] / monolith['throughput_rps']:.2f}x")
    return measured


def run_near_off(bench: "Bench"):
    """The gateway restarted without its near cache, then with it again for the rest."""
    restart_gateway(bench, near_cache_rows="0")
    try:
        for distribution, draw in draws(bench.table_size).items():
            bench.results["b3"][b3_key("system", distribution, near=False)] = system_reads(
                bench, distribution, draw(), near=False)
    finally:
        restart_gateway(bench, near_cache_rows=None)


def draws(table_size: int) -> dict:
    """Makers of the id draws, seeded: the system and the monolith read the same ids."""
    ids = list(range(1, table_size + 1))
    return {"uniform": lambda: uniform_chooser(ids, 11), "zipf": lambda: zipf_chooser(ids, ZIPF_S, 11)}


def b3_key(target: str, distribution: str, near: bool = True, token: bool = False) -> str:
    """"system", "system_zipf", "system_token", "system_near_off", "system_near_off_zipf",
    "monolith", "monolith_zipf", "monolith_gunicorn", "monolith_gunicorn_zipf": B3 keeps its
    first keys for the uniform reads, near cache on."""
    return target + ("" if near else "_near_off") + ("_token" if token else "") + (
        "" if distribution == "uniform" else f"_{distribution}")


def reads(table_size: int, choose, token: str | None = None):
    headers = {"X-Consistency-Token": token} if token else None
    requests = {i: request_bytes("GET", f"/albums/{i}", headers=headers) for i in range(1, table_size + 1)}
    return lambda: requests[choose()]


def system_reads(bench: "Bench", distribution: str, choose, near: bool, token: str | None = None,
                 profiled: bool = True) -> dict:
    """token: the consistency token every read presents, if any; profiled: whether py-spy
    may record it (once per variant)."""
    variant = f"near cache {'on' if near else 'off'}, {distribution}" + (", with a token" if token else "")
    cache_port, gateway_port = bench.stack.metrics_ports["CACHE"], bench.stack.gateway_port
    if near:
        time.sleep(NEAR_COUNTS_WAIT_S)
    cache_before, gateway_before = stores.scrape(cache_port), stores.scrape(gateway_port)
    log(f"B3 {variant}: reads from the system, {bench.profile.concurrency} connections "
        f"for {bench.profile.b3_duration_s:g} s")
    label = None if distribution != "uniform" or not profiled else \
        "b3-token" if token else "b3" if near else "b3-near-off"
    summary = measure_load(bench.profile, bench.system, gateway_port, bench.stack.processes["gateway"].pid,
                           reads(bench.table_size, choose, token), bench.profile.b3_duration_s,
                           bench.profiled(label), tiers=True)[0]
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


def monolith_reads(bench: "Bench", anchor: stores.MonolithApp, distribution: str, choose) -> dict:
    log(f"B3 {distribution}: reads from the monolith under {anchor.server}, {bench.profile.concurrency} "
        f"connections for {bench.profile.b3_duration_s:g} s")
    summary = measure_load(bench.profile, bench.system, anchor.port, anchor.process.pid,
                           reads(bench.table_size, choose), bench.profile.b3_duration_s)[0]
    summary.update({"distribution": distribution, "server": anchor.server, "server_process": anchor.name})
    log(f"B3 {distribution}: monolith under {anchor.server} {summary['throughput_rps']:,.0f} req/s, "
        f"p99 {summary['p99_ms']:.1f} ms, {busiest(summary)}")
    return summary


def warm_near_cache(bench: "Bench", ids: list[int]) -> dict:
    """Reads every row through each worker process of the gateway, so that every near
    cache holds them all."""
    port = bench.stack.gateway_port
    workers = descendants(bench.stack.processes["gateway"].pid)
    started = time.perf_counter()
    sweep = run_sweep(port, [f"/albums/{i}" for i in ids], lambda ports: stores.connection_owners(workers, port),
                      len(workers), bench.profile.concurrency, count_header="X-Cache-Tier")
    sweep = {"workers": len(workers), **sweep, "seconds": round(time.perf_counter() - started, 3),
             "header_counts": {value or "absent": n for value, n in sorted(sweep["header_counts"].items())}}
    log(f"near cache of the gateway: {len(ids):,} rows read through {sweep['processes_reached']} of "
        f"{len(workers)} workers ({sweep['requests']:,} reads in {sweep['seconds']:.1f} s, "
        f"X-Cache-Tier {sweep['header_counts']})")
    return sweep


def restart_gateway(bench: "Bench", near_cache_rows: str | None):
    """Restarts the first gateway with its near cache as the stack runs it (None), or
    holding this many rows."""
    bench.stack.stop("gateway")
    if near_cache_rows is None:
        bench.stack.process_env.get("gateway", {}).pop(NEAR_CACHE_ROWS, None)
    else:
        bench.stack.configure("gateway", **{NEAR_CACHE_ROWS: near_cache_rows})
    bench.stack.start("gateway")
    log(f"gateway restarted with {NEAR_CACHE_ROWS}={near_cache_rows or 'as configured'}")


def fill_monolith_cache(bench: "Bench"):
    """The monolith reads from a warm cache, as the system does after B1 and B2."""
    rows = psycopg2.connect(bench.anchor.database_url)
    try:
        with rows, rows.cursor() as cur:
            cur.execute("SELECT album_id, title, artist_id FROM album")
            records = cur.fetchall()
    finally:
        rows.close()
    with bench.anchor_redis.pipeline(transaction=False) as pipe:
        for album_id, title, artist_id in records:
            key = f"{bench.anchor.key_prefix}album:{album_id}"
            pipe.hset(key, mapping={"title": title, "artist_id": str(artist_id)})
            pipe.expire(key, 3600)
        pipe.execute()
