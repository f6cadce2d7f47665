"""The near cache in real gateway processes: repeated reads stay in the process, a write
through one process reaches the near caches of another one through cache-svc's change
stream, and a restart of cache-svc clears them.

A keep-alive connection stays with one gateway worker, so a requests.Session reads
through one process; a fresh connection may land on either worker."""

import time

import pytest
import requests

from testkit.metrics import samples, total
from testkit.near_cache import eventually, read_until_near

pytestmark = pytest.mark.e2e

# Far above the documented bound (NEAR_CACHE_MAX_LAG_MS, 1 s): a row left stale by a
# missed invalidation would stay so for CACHE_TTL_S.
VISIBLE_WITHIN_S = 5


def wait_for_title(session: requests.Session, url: str, title: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < VISIBLE_WITHIN_S:
        if session.get(url, timeout=10).json()["title"] == title:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"{url} still does not show {title!r} after {VISIBLE_WITHIN_S} s")


def test_repeated_reads_are_served_by_the_process_itself(stack):
    session = requests.Session()
    url = f"{stack.gateway_url}/albums/315"
    first = session.get(url, timeout=10)
    assert first.headers["X-Cache-Tier"] in ("redis", "postgres")
    near = read_until_near(session, url)
    assert near.headers["X-Cache-Tier"] == "near"
    assert (near.headers["X-Cache"], near.headers["X-Write-Back"]) == ("HIT", "clean")
    assert near.json() == first.json() == {"album_id": 315, "title": first.json()["title"], "artist_id": 208}


def test_a_process_reads_its_own_writes_at_once(stack):
    session = requests.Session()
    url = f"{stack.gateway_url}/albums/312"
    read_until_near(session, url)
    tiers = set()
    for attempt in range(30):
        title = f"own write {attempt}"
        assert session.patch(url, json={"title": title}, timeout=10).status_code == 202
        read = session.get(url, timeout=10)
        assert read.json()["title"] == title
        tiers.add(read.headers["X-Cache-Tier"])
    assert "near" in tiers


def test_a_write_through_one_process_reaches_the_near_caches_of_another(stack, api):
    stack.add_gateway("gateway-b")
    stack.start("gateway-b")
    try:
        url_b = f"{stack.gateway_url_of('gateway-b')}/albums/333"
        # Several connections, so that both workers of the second gateway hold the row.
        readers = [requests.Session() for _ in range(6)]
        tiers = [read_until_near(reader, url_b).headers["X-Cache-Tier"] for reader in readers]
        assert "near" in tiers
        for attempt in range(5):
            title = f"written through the first gateway {attempt}"
            assert api.patch("/albums/333", json={"title": title}).status_code == 202
            for reader in readers:
                wait_for_title(reader, url_b, title)
        api.flush()
        for reader in readers:
            eventually(lambda reader=reader: reader.get(url_b, timeout=10).headers["X-Write-Back"] == "clean",
                       "the flush never reached the second gateway", VISIBLE_WITHIN_S)
        # Each process publishes its near-cache counts every quarter of a second.
        metrics_b = f"{stack.gateway_url_of('gateway-b')}/metrics"
        eventually(lambda: total(samples(metrics_b), "chinook_near_cache_invalidations_total") >= 1,
                   "no invalidation counted", VISIBLE_WITHIN_S)
        assert total(samples(metrics_b), "chinook_near_cache_hits_total") >= 1
    finally:
        stack.stop("gateway-b")


def test_a_discarded_dead_letter_leaves_no_copy_in_the_near_cache(api, stack):
    api.sql("ALTER TABLE album ADD CONSTRAINT album_no_venom CHECK (title NOT LIKE 'VENOM%%') NOT VALID")
    try:
        session = requests.Session()
        url = f"{stack.gateway_url}/albums/290"
        before = session.get(url, timeout=10).json()["title"]
        assert session.patch(url, json={"title": "VENOM"}, timeout=10).status_code == 202
        deadline = time.monotonic() + 30
        while session.get(url, timeout=10).headers["X-Write-Back"] != "dead-letter":
            assert time.monotonic() < deadline, "the write never reached the dead letters"
            time.sleep(0.05)
        assert read_until_near(session, url).json()["title"] == "VENOM"
        assert session.delete(f"{stack.gateway_url}/write-back/dead-letters/album:290", timeout=10).status_code == 200
        deadline = time.monotonic() + VISIBLE_WITHIN_S
        while (read := session.get(url, timeout=10)).json()["title"] == "VENOM":
            assert time.monotonic() < deadline, "the near cache still serves the discarded write"
            time.sleep(0.01)
        assert read.json()["title"] == before
    finally:
        api.sql("ALTER TABLE album DROP CONSTRAINT IF EXISTS album_no_venom")


def test_a_cache_svc_restart_clears_the_near_caches(stack):
    session = requests.Session()
    url = f"{stack.gateway_url}/albums/344"
    assert read_until_near(session, url).headers["X-Cache-Tier"] == "near"
    reconnects = total(samples(f"{stack.gateway_url}/metrics"), "chinook_near_cache_reconnects_total")
    stack.stop("cache-svc")
    stack.start("cache-svc")
    # The gateway's channel may still be waiting to reconnect (503) for a moment; the first
    # read it answers comes from cache-svc, not from a near cache kept across the restart.
    first = []
    eventually(lambda: first.append(session.get(url, timeout=10)) or first[-1].status_code == 200,
               "the gateway did not answer after cache-svc restarted", VISIBLE_WITHIN_S)
    assert first[-1].headers["X-Cache-Tier"] != "near"
    eventually(lambda: total(samples(f"{stack.gateway_url}/metrics"), "chinook_near_cache_reconnects_total")
               > reconnects, "no reconnect counted", VISIBLE_WITHIN_S)
    assert read_until_near(session, url).headers["X-Cache-Tier"] == "near"
