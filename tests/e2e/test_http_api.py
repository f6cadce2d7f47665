"""The gateway's HTTP API, end to end through all five processes."""

import uuid

import pytest

pytestmark = pytest.mark.e2e


def test_health_and_readiness(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_first_read_misses_then_hits(api):
    first = api.get("/albums/12")
    second = api.get("/albums/12")
    assert first.status_code == second.status_code == 200
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.headers["X-Write-Back"] == "clean"
    assert first.json() == second.json() == {"album_id": 12, "title": "BackBeat Soundtrack", "artist_id": 9}


def test_artist_read(api):
    response = api.get("/artists/127")
    assert response.status_code == 200
    assert response.json() == {"artist_id": 127, "name": "Red Hot Chili Peppers"}


def test_update_is_visible_at_once_and_in_postgres_after_the_flush(api):
    response = api.patch("/albums/20", json={"title": "Written Back", "artist_id": 3})
    assert response.status_code == 202
    body = response.json()
    assert body["album_id"] == 20 and body["write_back"] == "pending" and body["version"] > 0
    read = api.get("/albums/20")
    assert read.json() == {"album_id": 20, "title": "Written Back", "artist_id": 3}
    assert read.headers["X-Write-Back"] in ("pending", "clean")
    api.flush()
    assert api.sql("SELECT title, artist_id, wb_version FROM album WHERE album_id = 20") \
        == [("Written Back", 3, body["version"])]
    assert api.get("/albums/20").headers["X-Write-Back"] == "clean"


def test_artist_update_reaches_postgres(api):
    assert api.patch("/artists/5", json={"name": "Renamed Artist"}).status_code == 202
    api.flush()
    assert api.sql("SELECT name FROM artist WHERE artist_id = 5") == [("Renamed Artist",)]


def test_the_last_of_several_updates_wins(api):
    for i in range(20):
        assert api.patch("/albums/30", json={"title": f"take {i}"}).status_code == 202
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 30") == [("take 19",)]


def test_bulk_update_converges_in_postgres(api):
    ids = [row[0] for row in api.sql("SELECT album_id FROM album WHERE album_id <= 347 ORDER BY 1")]
    updates = [{"album_id": i, "title": f"bulk {i}"} for i in ids]
    response = api.post("/albums/bulk", json={"updates": updates})
    assert response.status_code == 202 and response.json() == {"accepted": len(ids)}
    api.flush()
    rows = dict(api.sql("SELECT album_id, title FROM album WHERE album_id <= 347"))
    assert rows == {i: f"bulk {i}" for i in ids}


def test_bulk_random_updates_every_album_and_converges(api):
    before = api.get("/write-back/status").json()
    response = api.post("/albums/bulk-random")
    total = api.sql("SELECT count(*) FROM album")[0][0]
    assert response.status_code == 202 and response.json() == {"accepted": total}
    status = api.flush()
    assert status["accepted_total"] - before["accepted_total"] == total
    titles = dict(api.sql("SELECT album_id, title FROM album"))
    for album_id in (1, 193, 347):
        cached = api.get(f"/albums/{album_id}").json()["title"]
        assert cached == titles[album_id] and cached.endswith(f" {album_id}")


def test_write_back_status_shape(api):
    body = api.get("/write-back/status").json()
    assert set(body) == {"pending", "oldest_pending_age_s", "accepted_total", "flushed_total", "failed"}
    assert body["accepted_total"] >= body["flushed_total"] >= 0


def test_flush_without_wait_schedules_and_returns(api):
    api.patch("/albums/40", json={"title": "flush me"})
    response = api.post("/write-back/flush")
    assert response.status_code == 202
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 40") == [("flush me",)]


def test_duplication_doubles_the_album_table_with_progress(api):
    api.flush()
    before = api.sql("SELECT count(*), max(album_id) FROM album")[0]
    original = api.sql("SELECT title, artist_id FROM album WHERE album_id = 193")[0]
    response = api.post("/tasks/duplicate", json={"multiplier": 2})
    assert response.status_code == 202
    task, seen = api.wait_for_task(response.json()["task_id"])
    assert task["state"] == "SUCCESS", task
    assert task["progress"] == {"done": before[0], "total": before[0]}
    assert task["result"]["inserted"] == before[0]
    assert all(set(s) == {"task_id", "state", "progress", "result", "error"} for s in seen)
    assert api.sql("SELECT count(*), count(DISTINCT album_id) FROM album")[0] == (before[0] * 2, before[0] * 2)
    copy = api.get(f"/albums/{193 + before[1]}")
    assert copy.status_code == 200 and copy.headers["X-Cache"] == "MISS"
    assert (copy.json()["title"], copy.json()["artist_id"]) == original


def test_unknown_task_reads_as_pending_and_a_malformed_id_is_refused(api):
    body = api.get(f"/tasks/{uuid.uuid4()}").json()
    assert body["state"] == "PENDING" and body["progress"] == {"done": 0, "total": 0}
    for malformed in ("no-such-task", "a" * 3000, str(uuid.uuid4()).upper()):
        response = api.get(f"/tasks/{malformed}")
        assert response.status_code == 400 and response.json()["error"]["message"].startswith("task_id: a task id")


# The original demo's routes


def test_legacy_album_route(api):
    response = api.get("/album?album_id=193")
    assert response.status_code == 200
    assert set(response.json()) == {"album_id", "title"} and response.json()["album_id"] == 193


def test_legacy_update_album_lists_the_scheduled_work(api):
    response = api.get("/update-album")
    assert response.status_code == 200
    items = response.json()
    assert isinstance(items, list) and len(items) == api.sql("SELECT count(*) FROM album")[0][0]
    assert all(set(item) == {"album_id", "version"} for item in items)
    api.flush()
    album_id, version = items[0]["album_id"], items[0]["version"]
    assert api.sql("SELECT wb_version >= %s FROM album WHERE album_id = %s", (version, album_id)) == [(True,)]


def test_legacy_duplicate_and_task_result(api):
    response = api.get("/duplicate_database")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("Duplication task started (id.: ") and response.text.endswith(")")
    task_id = response.text.removeprefix("Duplication task started (id.: ").removesuffix(")")
    api.wait_for_task(task_id)
    result = api.get(f"/get_task_result?result_id={task_id}").json()
    assert result["ready"] is True and result["successful"] is True and result["value"]["inserted"] > 0
    assert api.get(f"/get_task_result?result_id={uuid.uuid4()}").json() == {"status": "Pending"}
    assert api.get("/get_task_result?result_id=not-started-yet").status_code == 400


def test_a_nullable_column_can_be_set_to_null(api):
    assert api.get("/artists/3").json()["name"] == "Aerosmith"
    assert api.patch("/artists/3", json={"name": None}).status_code == 202
    assert api.get("/artists/3").json() == {"artist_id": 3, "name": None}
    api.flush()
    assert api.sql("SELECT name FROM artist WHERE artist_id = 3") == [(None,)]
    assert api.patch("/artists/3", json={"name": "Aerosmith"}).status_code == 202
    api.flush()
    assert api.sql("SELECT name FROM artist WHERE artist_id = 3") == [("Aerosmith",)]


def test_a_bulk_accepts_rows_not_cached_without_reading_them_and_reads_complete_them(api, stack):
    ids = list(range(200, 206))
    api.flush()
    before = dict(api.sql("SELECT album_id, artist_id FROM album WHERE album_id = ANY(%s)", (ids,)))
    store = stack.row_store()
    cache = store.redis
    cache.delete(*[store.keys.row_key("album", i) for i in ids])
    response = api.post("/albums/bulk", json={"updates": [{"album_id": i, "title": f"cold {i}"} for i in ids]})
    assert response.status_code == 202
    assert cache.hget(store.keys.row_key("album", 200), "_partial") == "1"
    # A single update of a partial row leaves it partial; a read completes it.
    assert api.patch("/albums/201", json={"title": "cold, then patched"}).status_code == 202
    assert api.get("/albums/201").json() == {"album_id": 201, "title": "cold, then patched", "artist_id": before[201]}
    assert api.get("/albums/200").json() == {"album_id": 200, "title": "cold 200", "artist_id": before[200]}
    api.flush()
    rows = {i: (t, a) for i, t, a in api.sql(
        "SELECT album_id, title, artist_id FROM album WHERE album_id = ANY(%s)", (ids,))}
    expected = {i: (f"cold {i}", before[i]) for i in ids}
    expected[201] = ("cold, then patched", before[201])
    assert rows == expected
