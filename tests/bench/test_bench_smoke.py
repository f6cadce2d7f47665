"""`make bench` in miniature: every scenario with a few rows and a second of load, B6's
four configurations included, so the benchmark code cannot rot. Nothing here asserts a
time."""

import json

import pytest

from bench import report
from bench.__main__ import run
from bench.profiles import SMOKE

pytestmark = pytest.mark.e2e

SERVICES = {"persistence-svc", "cache-svc", "gateway", "write-back-worker", "duplication-worker"}
B3_KEYS = {"system", "system_zipf", "system_token", "system_near_off", "system_near_off_zipf", "monolith",
           "monolith_zipf", "monolith_gunicorn", "monolith_gunicorn_zipf"}
B3_ROUND_KEYS = {"system", "system_token", "system_zipf", "monolith", "monolith_zipf"}
# B6's configurations: Redis servers, cache-svc processes, WRITEBACK_MIN_REPLICAS.
B6_SHAPES = {"a": (1, 1, 0), "b": (1, 2, 0), "c": (6, 1, 0), "d": (6, 1, 1)}


def assert_worker_split(summary):
    split = summary["server_workers"]
    assert split["workers"] >= 1 and len(split["cpu_s"]) == split["workers"]
    assert len(split["shares"]) == split["workers"] and split["largest_share"] == max(split["shares"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("bench-results")
    results, json_path, png_path = run("smoke", results_dir, plot_copy=results_dir / "copy.png")
    return results, json_path, png_path, results_dir


def test_writes_json_and_plot(smoke):
    results, json_path, png_path, results_dir = smoke
    assert json.loads(json_path.read_text())["table"] == results["table"]
    for path in (png_path, results_dir / "copy.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_b1_and_b5_reach_postgres_at_every_size(smoke):
    results = smoke[0]
    # The bench itself checks that Postgres holds every value of each bulk.
    assert [(b["n"], b["cache"]) for b in results["b1"]] == [(347, "cold"), (347, "warm"), (694, "cold")]
    for b1 in results["b1"]:
        assert b1["requests"] == -(-b1["n"] // 250)
        assert 0 < b1["ack_s"] <= b1["durable_s"]
        assert b1["floor_redis_s"] > 0 and b1["floor_sql_s"] > 0
        assert b1["series"]["pg_rows"][-1] == b1["n"] and b1["series"]["written_rows"][-1] <= b1["n"]
        assert set(b1["peak_rss_mb"]) == SERVICES
        assert all(m["max_mb"] > 0 for m in b1["peak_rss_mb"].values())


def test_b2_counts_updates_transactions_and_lag(smoke):
    results = smoke[0]
    for mix in ("uniform", "hot"):
        system, through = results["b2"][mix]["system"], results["b2"][mix]["write_through"]
        on_gunicorn = results["b2"][mix]["write_through_gunicorn"]
        assert system["requests"] > 0 and through["requests"] > 0 and on_gunicorn["requests"] > 0
        assert system["errors"] == through["errors"] == on_gunicorn["errors"] == 0
        assert (through["server"], on_gunicorn["server"]) == ("granian", "gunicorn")
        # Each anchor's own processes used CPU: the gateway's CPU is compared with theirs.
        for anchor in (through, on_gunicorn):
            assert anchor["cpu_ms_per_request"][anchor["server_process"]] > 0
        assert system["cpu_ms_per_request"]["gateway"] > 0
        assert_worker_split(on_gunicorn)
        assert system["accepted_updates"] >= system["requests"]
        assert system["pg_transactions"] > 0 and system["lag_rows_cleaned"] > 0
        assert system["lag_p99_s"] is not None
        assert through["pg_transactions"] >= through["requests"]
        for summary in (system, through):
            # None only if Postgres used less than a clock tick.
            assert summary["updates_per_postgres_core_s"] is None or summary["updates_per_postgres_core_s"] > 0
            assert_worker_split(summary)


def test_b3_reads_both_with_the_near_cache_on_and_off(smoke):
    b3 = dict(smoke[0]["b3"])
    rounds = b3.pop("rounds")
    assert set(b3) == B3_KEYS
    # The profile's rounds with the near cache on, the first of which the other comparisons use.
    assert len(rounds) == SMOKE.b3_rounds == 2 and all(set(measured) == B3_ROUND_KEYS for measured in rounds)
    assert all(rounds[0][key] == b3[key] for key in B3_ROUND_KEYS)
    for summary in [*b3.values(), *(s for measured in rounds for s in measured.values())]:
        assert summary["requests"] > 0 and summary["errors"] == 0
        assert_worker_split(summary)
    for key in ("system", "system_zipf"):
        system = b3[key]
        assert system["near_cache"] == "on" and system["cache_hit_ratio"] in (None, 1)
        assert sum(system["x_cache_tier"].values()) == system["requests"]
        assert system["near_hits"] + system["near_misses"] > 0
        warm_up = system["near_warm_up"]
        assert warm_up["processes_reached"] == warm_up["workers"] >= 1
        assert warm_up["requests"] == warm_up["workers"] * 347
    for key in ("system_near_off", "system_near_off_zipf"):
        system = b3[key]
        assert system["near_cache"] == "off" and system["cache_hit_ratio"] == 1
        assert system["near_hits"] == 0 and system["x_cache_tier"].get("near", 0) == 0
    # Reads presenting the token of a write made before the step, in every round: the near
    # cache serves them.
    for measured in rounds:
        with_token = measured["system_token"]
        assert with_token["token"] and with_token["near_cache"] == "on" and with_token["cpu_ratio_to_without"] > 0
        assert with_token["x_cache_tier"].get("near", 0) > 0 and with_token["near_hits"] > 0
    (cost,) = [r for r in report.rows(smoke[0]) if r.scenario.endswith("with a token") and r.target != "-"]
    assert cost.measure == "CPU per request, all processes" and cost.system.endswith(", mean of 2 rounds")


def test_mix_against_the_monolith_with_the_stale_read_probe(smoke):
    mix = smoke[0]["mix"]
    system, monolith, probe = mix["system"], mix["monolith"], mix["stale_probe"]
    for summary in (system, monolith):
        assert summary["requests"] > 0 and summary["errors"] == 0
        assert_worker_split(summary)
    # The gateway answers a PATCH with 202, a GET with 200.
    assert system["statuses"].get("202", 0) > 0 and system["statuses"].get("200", 0) > 0
    assert system["accepted_updates"] > 0
    assert probe["error"] is None
    assert probe["probes"] > 0 and probe["visible"] + probe["never_visible"] == probe["probes"]
    assert probe["reads"] > 0 and probe["reader_workers_reached"] == probe["reader_workers"] >= 1
    assert probe["stale_reads_after_bound"] >= 0


def test_b4_duplicates_through_the_system_and_insert_select(smoke):
    b4 = smoke[0]["b4"]
    assert (b4["rows_before"], b4["rows_after"], b4["inserted"]) == (347, 694, 347)


def test_b6_runs_b1_and_b2_in_each_configuration_as_named(smoke):
    results = smoke[0]
    b6 = results["b6"]
    assert b6["rows"] == 347 and b6["private_redis_persistence"]["appendonly"] == "yes"
    configs = {config["key"]: config for config in b6["configs"]}
    assert {key: (config["redis_servers"], len(config["cache_svc_calls"]), config["min_replicas"])
            for key, config in configs.items()} == B6_SHAPES
    for config in configs.values():
        # The bench itself checks that Postgres holds every value of each bulk.
        for bulk in config["b1"].values():
            assert bulk["requests"] == 2 and 0 < bulk["ack_s"] <= bulk["durable_s"]
        updates = config["b2_uniform"]
        assert updates["requests"] > 0 and updates["errors"] == 0
        assert updates["accepted_updates"] >= updates["requests"] and updates["lag_rows_cleaned"] > 0
        # Each cache-svc answered calls (the gateway and the workers take turns), and
        # Redis ran WAIT only where WRITEBACK_MIN_REPLICAS asks for it.
        assert all(calls > 0 for calls in config["cache_svc_calls"].values())
        assert (config["redis_wait_calls"] > 0) == (config["min_replicas"] > 0)
        # Replicas count as one component.
        per_request = config["summary"]["b2_cpu_ms_per_request"]
        assert {"gateway", "cache-svc", "redis-server"} <= set(per_request) and "cache-svc-2" not in per_request
        assert per_request["all"] == pytest.approx(sum(v for k, v in per_request.items() if k != "all"), abs=1e-3)
    ratios = results["b6_ratios"]
    assert set(ratios) == {"(b)/(a) a second cache-svc", "(c)/(a) the cluster client", "(d)/(c) WAIT"}
    assert all(ratio > 0 for measured in ratios.values() for ratio in measured.values())


def test_table_has_a_row_per_target(smoke):
    results = smoke[0]
    measured = {(r.scenario.split()[0], r.measure) for r in report.rows(results)}
    for expected in [("B1", "acknowledged, rows not cached"), ("B1", "durable in Postgres, rows cached"),
                     ("B2", "throughput"), ("B2", "updates per Postgres core-second"),
                     ("B2", "busiest worker's CPU share"), ("B2", "CPU per request, gateway / anchor app"),
                     ("B2", "p99 accept-to-durable"), ("B2", "Postgres transactions per update"),
                     ("B3", "throughput"), ("B3", "near-cache hits (X-Cache-Tier)"),
                     ("B3", "busiest worker's CPU share"), ("Mix", "throughput"),
                     ("Mix", "stale reads after the 1 s bound"), ("B4", "copy rate"), ("B5", "bulk to durable")]:
        assert expected in measured
    b3_rows = {r.scenario for r in report.rows(results) if r.measure == "throughput" and r.scenario.startswith("B3")}
    assert len(b3_rows) == 5
    # Near cache on: the 1.3x target checked in each round, uniform and Zipf.
    rounds = [r for r in report.rows(results) if r.measure.startswith("throughput, round")]
    assert len(rounds) == 2 * SMOKE.b3_rounds and all(r.target == ">= 1.3x" and r.met is not None for r in rounds)
    # B2 and B3 against the anchors under gunicorn too, without a target.
    on_gunicorn = [r for r in report.rows(results) if r.anchor.startswith(("write-through on gunicorn",
                                                                          "monolith on gunicorn"))]
    assert {r.scenario.split()[0] for r in on_gunicorn} == {"B2", "B3"} and all(r.met is None for r in on_gunicorn)
    [token_cost] = [r for r in report.rows(results) if r.scenario.endswith("with a token") and r.met is not None]
    assert token_cost.measure == "CPU per request, all processes" and token_cost.ratio.endswith("x")
    assert {r.measure for r in report.rows(results) if r.scenario.startswith("B5 peak RSS")} == SERVICES
    b6_rows = [r for r in report.rows(results) if r.scenario.startswith("B6 ")]
    assert len(b6_rows) == 4 * len(report.B6_MEASURES)
    # Each configuration but the baseline against the one it differs from by one thing.
    assert {r.scenario[:6]: r.anchor[:3] for r in b6_rows if r.ratio != "-"} == {
        "B6 (b)": "(a)", "B6 (c)": "(a)", "B6 (d)": "(c)"}


def test_tracing_cost_runs_b2_and_b3_with_tracing_off_a_tenth_sampled_every_trace_and_off_again(smoke):
    tracing = smoke[0]["tracing_cost"]
    for load in ("b2", "b3"):
        assert set(tracing[load]) == {"off", "tenth", "every", "off_again"}
        for summary in tracing[load].values():
            assert summary["requests"] > 0 and summary["errors"] == 0
        assert set(tracing["ratios"][load]) == {"tenth", "every"}
    assert tracing["b3"]["every"]["x_cache_tier"].get("near", 0) > 0
    spans = tracing["spans_received"]
    assert spans["off"]["exports"] == spans["off_again"]["exports"] == 0 and spans["every"]["bytes"] > 0
    rows = [r for r in report.rows(smoke[0]) if r.scenario.startswith("Tracing")]
    assert [(r.scenario.split(",")[1].strip()[:2], r.target) for r in rows] == [
        ("B2", "<= 1.15x"), ("B2", "<= 1.5x"), ("B3", "<= 1.15x"), ("B3", "<= 1.5x")]
