"""Poison writes go to the dead letters without holding up other rows; every
service serves Prometheus metrics."""

import time

import pytest
import requests

pytestmark = pytest.mark.e2e


@pytest.fixture
def poison_constraint(api):
    """A constraint added after writes were accepted: Postgres refuses titles starting with POISON."""
    with api.poison_titles_refused():
        yield


def wait_for_dead_letters(api, count, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = api.get("/write-back/dead-letters").json()
        if body["total"] >= count:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"expected {count} dead letters, have {body}")


def test_poison_write_is_dead_lettered_retried_and_discarded(api, poison_constraint):
    before = api.get("/write-back/status").json()["failed"]
    assert api.patch("/albums/70", json={"title": "POISON one"}).status_code == 202
    assert api.patch("/albums/71", json={"title": "healthy neighbour"}).status_code == 202
    body = wait_for_dead_letters(api, before + 1)
    [entry] = [e for e in body["dead_letters"] if e["key"] == "album:70"]
    assert "album_no_poison" in entry["error"] and entry["value"]["title"] == "POISON one"
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 71") == [("healthy neighbour",)]
    assert api.get("/write-back/status").json()["failed"] == before + 1
    read = api.get("/albums/70")
    assert read.json()["title"] == "POISON one" and read.headers["X-Write-Back"] == "dead-letter"

    api.accept_poison_titles()
    retried = api.post("/write-back/dead-letters/album:70/retry")
    assert retried.status_code == 202 and retried.json()["write_back"] == "pending"
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 70") == [("POISON one",)]
    assert api.get("/albums/70").headers["X-Write-Back"] == "clean"
    assert api.get("/write-back/status").json()["failed"] == before

    api.refuse_poison_titles()
    api.patch("/albums/72", json={"title": "POISON two"})
    wait_for_dead_letters(api, before + 1)
    assert api.delete("/write-back/dead-letters/album:72").json()["discarded"] is True
    read = api.get("/albums/72")
    assert read.headers["X-Cache"] == "MISS" and not read.json()["title"].startswith("POISON")
    assert api.post("/write-back/dead-letters/album:72/retry").status_code == 404


def test_bad_dead_letter_keys(api):
    assert api.post("/write-back/dead-letters/album-72/retry").status_code == 400
    assert api.post("/write-back/dead-letters/track:1/retry").status_code == 400
    assert api.post("/write-back/dead-letters/album:123456/retry").status_code == 404


def scrape(url):
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return response.text


def test_every_process_serves_metrics(api, stack):
    api.get("/albums/1")
    api.patch("/albums/80", json={"title": "metered"})
    api.flush()
    gateway = scrape(f"{stack.gateway_url}/metrics")
    assert 'chinook_http_request_duration_seconds_count{method="PATCH",route="/albums/<album_id>",status="202"}' \
        in gateway
    for name in ("chinook_near_cache_misses_total", "chinook_near_cache_reconnects_total",
                 "chinook_near_cache_invalidation_delay_seconds_bucket"):
        assert name in gateway, name
    cache = scrape(f"http://127.0.0.1:{stack.metrics_ports['CACHE']}/metrics")
    for name in ("chinook_writes_accepted_total", "chinook_rows_flushed_total", "chinook_pending_rows",
                 "chinook_oldest_pending_age_seconds", "chinook_accept_to_durable_seconds_bucket",
                 'chinook_cache_reads_total{entity="album",result=', "chinook_tasks_published_total",
                 'chinook_grpc_server_handling_seconds_count{code="OK",method="/chinook.cache.v1.CacheService/UpdateRows"}'):
        assert name in cache, name
    persistence = scrape(f"http://127.0.0.1:{stack.metrics_ports['PERSISTENCE']}/metrics")
    assert 'chinook_flush_statements_total{entity="album"}' in persistence
    worker = scrape(f"http://127.0.0.1:{stack.metrics_ports['WRITE_BACK_WORKER']}/metrics")
    assert 'chinook_tasks_handled_total{state="SUCCESS",task="chinook.write_back.apply_writes"}' in worker
