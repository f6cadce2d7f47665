"""The read-mostly mix: 95 % GET, 5 % PATCH on Zipf-skewed ids, through the system while a
probe measures how long a second gateway serves a row's value from before a write; and
through the monolith anchor."""

import random
import time
from typing import TYPE_CHECKING

from testkit.stores import descendants

from .. import stores
from ..load import ZIPF_S, request_bytes, zipf_chooser
from ..measure import NEAR_COUNTS_WAIT_S, busiest, log, measure_load, near_cache_counts, round_or_none
from ..staleness import StaleReadProbe

if TYPE_CHECKING:
    from ..run import Bench

# This share of the mix's requests are PATCHes, the rest GETs.
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
# The gateway the probe reads through, which the stack starts for the mix only.
SECOND_GATEWAY = "gateway-b"


def run(bench: "Bench"):
    ids = list(range(1, bench.table_size + 1))
    mix_ids, probe_ids = ids[:-PROBE_ROWS], ids[-PROBE_ROWS:]
    bench.stack.start(SECOND_GATEWAY)
    try:
        bench.results["mix"]["system"], bench.results["mix"]["stale_probe"] = system_mix(bench, mix_ids, probe_ids)
    finally:
        bench.stack.stop(SECOND_GATEWAY)
    bench.results["mix"]["monolith"] = monolith_mix(bench, mix_ids)


def mix_requests(label: str, ids: list[int]):
    choose, draw, counter = zipf_chooser(ids, ZIPF_S, 13), random.Random(17).random, iter(range(1 << 62))
    gets = {i: request_bytes("GET", f"/albums/{i}") for i in ids}
    prefix = label.encode()

    def next_request():
        album_id = choose()
        if draw() < MIX_PATCH_SHARE:
            return request_bytes("PATCH", f"/albums/{album_id}", b'{"title": "%s %d"}' % (prefix, next(counter)))
        return gets[album_id]
    return next_request


def system_mix(bench: "Bench", mix_ids: list[int], probe_ids: list[int]) -> tuple[dict, dict]:
    """The mix through the first gateway, while the stale-read probe writes its own
    rows through it and reads them through the second."""
    # B3 left every row in the near cache of each of the first gateway's workers.
    gateway_port, second_port = bench.stack.gateway_port, bench.stack.gateway_ports[SECOND_GATEWAY]
    second_workers = descendants(bench.stack.processes[SECOND_GATEWAY].pid)
    accepted_before = bench.cache_counters().get("accepted", 0)
    time.sleep(NEAR_COUNTS_WAIT_S)
    gateway_before, second_before = stores.scrape(gateway_port), stores.scrape(second_port)
    probe = StaleReadProbe(
        gateway_port, second_port, len(second_workers),
        lambda ports: stores.connection_owners(second_workers, second_port), probe_ids,
        bound_s=STALE_BOUND_S, interval_s=PROBE_INTERVAL_S, poll_s=PROBE_POLL_S,
        prime_reads=PROBE_PRIME_READS, give_up_s=PROBE_GIVE_UP_S)
    log(f"mix: {1 - MIX_PATCH_SHARE:.0%} GET / {MIX_PATCH_SHARE:.0%} PATCH through the system, "
        f"{bench.profile.concurrency} connections for {bench.profile.mix_duration_s:g} s; stale-read probe "
        f"through {SECOND_GATEWAY}")
    probe.start()
    try:
        summary = measure_load(bench.profile, bench.system, gateway_port, bench.stack.processes["gateway"].pid,
                               mix_requests("mix system", mix_ids), bench.profile.mix_duration_s,
                               bench.profiled("mix"), tiers=True)[0]
    finally:
        probed = probe.stop()
    time.sleep(NEAR_COUNTS_WAIT_S)
    gateway_after, second_after = stores.scrape(gateway_port), stores.scrape(second_port)
    bench.api.flush(wait_s=120)
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
        "accepted_updates": bench.cache_counters().get("accepted", 0) - accepted_before,
        **near_cache_counts(gateway_before, gateway_after),
    })
    log(f"mix: system {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
        f"p99 {summary['p99_ms']:.1f} ms, near hit ratio {summary['near_hit_ratio']}, {busiest(summary)}")
    log(f"mix: {probed['probes']} probes, visible after p50 {probed['visibility_p50_ms']} ms, "
        f"p99 {probed['visibility_p99_ms']} ms, max {probed['visibility_max_ms']} ms; "
        f"{probed['stale_reads_after_bound']} stale reads after {STALE_BOUND_S:g} s"
        + (f"; probe failed: {probed['error']}" if probed["error"] else ""))
    return summary, probed


def monolith_mix(bench: "Bench", mix_ids: list[int]) -> dict:
    log("mix: through the monolith (write-through PATCH, GET from Redis)")
    summary = measure_load(bench.profile, bench.system, bench.monolith.port, bench.monolith.process.pid,
                           mix_requests("mix monolith", mix_ids), bench.profile.mix_duration_s)[0]
    summary.update({"distribution": "zipf", "zipf_s": ZIPF_S, "patch_share": MIX_PATCH_SHARE})
    log(f"mix: monolith {summary['throughput_rps']:,.0f} req/s, p50 {summary['p50_ms']:.1f} ms, "
        f"p99 {summary['p99_ms']:.1f} ms, {busiest(summary)}")
    return summary
