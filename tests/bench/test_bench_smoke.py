"""`make bench` in miniature: every scenario with a few rows and a second of load, so
the benchmark code cannot rot. Nothing here asserts a time."""

import json

import pytest

from bench import report
from bench.__main__ import run

pytestmark = pytest.mark.e2e

SERVICES = {"persistence-svc", "cache-svc", "gateway", "write-back-worker", "duplication-worker"}


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
        assert system["requests"] > 0 and through["requests"] > 0
        assert system["errors"] == through["errors"] == 0
        assert system["accepted_updates"] >= system["requests"]
        assert system["pg_transactions"] > 0 and system["lag_rows_cleaned"] > 0
        assert system["lag_p99_s"] is not None
        assert through["pg_transactions"] >= through["requests"]


def test_b3_reads_both(smoke):
    b3 = smoke[0]["b3"]
    assert b3["system"]["requests"] > 0 and b3["monolith"]["requests"] > 0
    assert b3["system"]["errors"] == b3["monolith"]["errors"] == 0
    assert b3["system"]["cache_hit_ratio"] == 1


def test_b4_duplicates_through_the_system_and_insert_select(smoke):
    b4 = smoke[0]["b4"]
    assert (b4["rows_before"], b4["rows_after"], b4["inserted"]) == (347, 694, 347)


def test_table_has_a_row_per_target(smoke):
    results = smoke[0]
    measured = {(r.scenario.split()[0], r.measure) for r in report.rows(results)}
    for expected in [("B1", "acknowledged, rows not cached"), ("B1", "durable in Postgres, rows cached"),
                     ("B2", "throughput"),
                     ("B2", "p99 accept-to-durable"), ("B2", "Postgres transactions per update"),
                     ("B3", "throughput"), ("B4", "copy rate"), ("B5", "bulk to durable")]:
        assert expected in measured
    assert {r.measure for r in report.rows(results) if r.scenario.startswith("B5 peak RSS")} == SERVICES
