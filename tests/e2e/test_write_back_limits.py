"""Backpressure, coalescing and batching, on a stack tuned to make them visible:
at most 1,000 pending rows, batches of 100, and a 1.5 s flush delay."""

import math
import time

import pytest
import requests

from testkit.api import Api
from testkit.metrics import counter
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e
MAX_PENDING, BATCH_SIZE = 1000, 100


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    with own_stack("limits", tmp_path_factory.mktemp("limits"), {
        "WRITEBACK_MAX_PENDING": str(MAX_PENDING),
        "WRITEBACK_BATCH_SIZE": str(BATCH_SIZE),
        "WRITEBACK_DELAY_MS": "1500",
    }) as stack:
        api = Api(stack)
        # Enough albums to go beyond the pending limit.
        api.sql("INSERT INTO album (album_id, title, artist_id) SELECT album_id + 347 * k, title, artist_id "
                "FROM album, generate_series(1, 3) AS k WHERE album_id <= 347")
        yield stack, api


def metric(stack, process, name, **labels):
    return counter(f"http://127.0.0.1:{stack.metrics_ports[process]}/metrics", name, **labels)


def test_backpressure_refuses_writes_beyond_the_pending_limit(tuned):
    stack, api = tuned
    stack.stop("write-back-worker")  # nothing drains while the limit fills
    try:
        before = api.get("/write-back/status").json()
        too_many = api.post("/albums/bulk", json={"updates": [{"album_id": i, "title": "x"} for i in
                                                              range(1, MAX_PENDING + 2)]})
        assert too_many.status_code == 503 and too_many.headers["Retry-After"]
        assert "WRITEBACK_MAX_PENDING" in too_many.json()["error"]["message"]
        assert api.get("/write-back/status").json()["accepted_total"] == before["accepted_total"]

        fits = api.post("/albums/bulk", json={"updates": [{"album_id": i, "title": f"fill {i}"} for i in
                                                         range(1, MAX_PENDING + 1)]})
        assert fits.status_code == 202 and api.get("/write-back/status").json()["pending"] == MAX_PENDING
        refused = api.patch(f"/albums/{MAX_PENDING + 1}", json={"title": "one too many"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "resource_exhausted"
        assert api.patch("/albums/1", json={"title": "an already pending row still takes writes"}).status_code == 202
    finally:
        stack.start("write-back-worker")
    api.flush(60)
    assert api.patch(f"/albums/{MAX_PENDING + 1}", json={"title": "accepted once drained"}).status_code == 202
    api.flush(60)
    assert api.sql("SELECT title FROM album WHERE album_id = %s", (MAX_PENDING + 1,)) == [("accepted once drained",)]


def test_updates_of_one_row_within_a_flush_window_are_written_once(tuned):
    stack, api = tuned
    api.flush()
    flushed = metric(stack, "CACHE", "chinook_rows_flushed_total", entity="album")
    coalesced = metric(stack, "CACHE", "chinook_rows_coalesced_total", entity="album")
    statements = metric(stack, "PERSISTENCE", "chinook_flush_statements_total", entity="album")
    updates = 25
    for i in range(updates):
        assert api.patch("/albums/7", json={"title": f"coalesce {i}"}).status_code == 202
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 7") == [(f"coalesce {updates - 1}",)]
    assert metric(stack, "CACHE", "chinook_rows_flushed_total", entity="album") - flushed == 1
    assert metric(stack, "CACHE", "chinook_rows_coalesced_total", entity="album") - coalesced == updates - 1
    assert metric(stack, "PERSISTENCE", "chinook_flush_statements_total", entity="album") - statements == 1


def test_n_dirty_rows_cause_about_n_over_batch_size_tasks_and_statements(tuned):
    stack, api = tuned
    api.flush()
    published = metric(stack, "CACHE", "chinook_tasks_published_total")
    statements = metric(stack, "PERSISTENCE", "chinook_flush_statements_total", entity="album")
    rows = 950
    response = api.post("/albums/bulk", json={"updates": [{"album_id": i, "title": f"batched {i}"}
                                                          for i in range(1, rows + 1)]})
    assert response.status_code == 202
    api.flush()
    tasks = metric(stack, "CACHE", "chinook_tasks_published_total") - published
    assert math.ceil(rows / BATCH_SIZE) <= tasks <= math.ceil(rows / BATCH_SIZE) + 1
    assert metric(stack, "PERSISTENCE", "chinook_flush_statements_total", entity="album") - statements == tasks


def test_status_reports_the_oldest_pending_age(tuned):
    stack, api = tuned
    api.flush()
    api.patch("/albums/9", json={"title": "waiting"})
    status = api.get("/write-back/status").json()
    assert status["pending"] == 1 and 0 <= status["oldest_pending_age_s"] < 1.5
    cache_metrics = requests.get(f"http://127.0.0.1:{stack.metrics_ports['CACHE']}/metrics", timeout=10).text
    assert "chinook_pending_rows 1.0" in cache_metrics


def restart_cache_svc(stack, api, **env):
    """cache-svc started again with `env`, once the gateway reaches it again."""
    stack.configure("cache-svc", **env)
    stack.stop("cache-svc")
    stack.start("cache-svc")
    deadline = time.monotonic() + 30
    while api.get("/write-back/status").status_code != 200:
        assert time.monotonic() < deadline, "the gateway does not reach the restarted cache-svc"
        time.sleep(0.1)


def test_an_update_no_replica_confirmed_is_refused_with_503_and_not_reported_accepted(tuned):
    # This Redis has no replica: with WRITEBACK_MIN_REPLICAS=1 no update can be confirmed.
    stack, api = tuned
    restart_cache_svc(stack, api, WRITEBACK_MIN_REPLICAS="1", WRITEBACK_REPLICA_TIMEOUT_MS="50")
    try:
        before = metric(stack, "CACHE", "chinook_writes_accepted_total", entity="album")
        refused = api.patch("/albums/7", json={"title": "held by no replica"})
        assert refused.status_code == 503 and "Retry-After" in refused.headers, refused.text
        assert "WRITEBACK_MIN_REPLICAS" in refused.json()["error"]["message"]
        bulk = api.post("/albums/bulk", json={"updates": [{"album_id": 8, "title": "held by no replica"}]})
        assert bulk.status_code == 503 and "Retry-After" in bulk.headers, bulk.text
        # Redis may have applied them (a retry is harmless); cache-svc reported neither accepted.
        assert metric(stack, "CACHE", "chinook_writes_accepted_total", entity="album") == before
    finally:
        restart_cache_svc(stack, api, WRITEBACK_MIN_REPLICAS="0")
    accepted = api.patch("/albums/7", json={"title": "confirmed by nobody, as before"})
    assert accepted.status_code == 202, accepted.text
