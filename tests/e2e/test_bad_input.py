"""Bad input gets a clear JSON error with the right status, and changes nothing."""

import pytest

pytestmark = pytest.mark.e2e


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["message"]


@pytest.fixture
def unchanged(api):
    """Asserts that albums 60-62 and the write-back counters are as before the test."""
    before_rows = api.sql("SELECT album_id, title, artist_id FROM album WHERE album_id BETWEEN 60 AND 62 ORDER BY 1")
    before_cached = [api.get(f"/albums/{i}").json() for i in (60, 61, 62)]
    before_accepted = api.get("/write-back/status").json()["accepted_total"]
    yield
    assert api.get("/write-back/status").json()["accepted_total"] == before_accepted
    assert [api.get(f"/albums/{i}").json() for i in (60, 61, 62)] == before_cached
    assert api.sql("SELECT album_id, title, artist_id FROM album WHERE album_id BETWEEN 60 AND 62 ORDER BY 1") \
        == before_rows


@pytest.mark.parametrize("path, status, message", [
    ("/albums/abc", 400, "album_id: must be a positive integer"),
    ("/albums/0", 400, "album_id: 0 is out of range"),
    ("/albums/99999999999", 400, "out of range"),
    ("/albums/999999", 404, "album 999999 not found"),
    ("/artists/999999", 404, "artist 999999 not found"),
    ("/album", 400, "album_id: query parameter required"),
    ("/album?album_id=1%20OR%201=1", 400, "album_id: must be a positive integer"),
    ("/get_task_result", 400, "result_id: query parameter required"),
    ("/no-such-route", 404, "not found"),
])
def test_bad_reads(api, path, status, message):
    assert message in error_of(api.get(path), status)


@pytest.mark.parametrize("body, status, message", [
    ({"title": ""}, 400, "title: must be 1-160 characters, got 0"),
    ({"title": "x" * 161}, 400, "title: must be 1-160 characters, got 161"),
    ({"title": None}, 400, "title: must not be null"),
    ({"artist_id": 999_999}, 400, "artist_id: artist 999999 does not exist"),
    ({"artist_id": "1"}, 400, "artist_id: must be an integer"),
    ({"title": "x", "year": 1999}, 400, "year: unknown field for album"),
    ({}, 400, "give at least one of title, artist_id"),
    ([], 400, "expected a JSON object"),
])
def test_bad_album_updates(api, unchanged, body, status, message):
    assert message in error_of(api.patch("/albums/60", json=body), status)


def test_update_of_a_missing_album_is_404(api, unchanged):
    assert "album 999999 not found" in error_of(api.patch("/albums/999999", json={"title": "x"}), 404)


def test_malformed_json(api, unchanged):
    response = api.patch("/albums/60", data=b'{"title": ', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in error_of(response, 400)
    assert "expected a JSON object" in error_of(api.patch("/albums/60"), 400)
    response = api.patch("/albums/60", data=b'{"artist_id": NaN}', headers={"Content-Type": "application/json"})
    assert "NaN is not a JSON value" in error_of(response, 400)


def test_bad_artist_update(api, unchanged):
    assert "name: must be 1-120 characters" in error_of(api.patch("/artists/1", json={"name": "n" * 121}), 400)


@pytest.mark.parametrize("body, message", [
    ({"updates": [{"album_id": 60, "title": "ok"}, {"album_id": 61, "title": ""}]}, "updates[1].title: must be 1-160"),
    ({"updates": [{"album_id": 60, "title": "ok"}, {"album_id": 999_999, "title": "x"}]},
     "updates[1].album_id: album 999999 does not exist"),
    ({"updates": [{"album_id": 60, "title": "ok"}, {"album_id": 61, "artist_id": 999_999}]},
     "updates[1].artist_id: artist 999999 does not exist"),
    ({"updates": [{"album_id": 60, "title": "ok"}, {"title": "no id"}]}, "updates[1]: expected an object with album_id"),
    ({"updates": [{"album_id": "sixty", "title": "x"}]}, "updates[0].album_id: must be a positive integer"),
    ({"updates": "all"}, "updates: expected a list"),
    ({"updates": [], "extra": 1}, "extra: unknown field"),
])
def test_a_bulk_update_with_one_bad_item_changes_nothing(api, unchanged, body, message):
    assert message in error_of(api.post("/albums/bulk", json=body), 400)


def test_too_many_bulk_items(api, unchanged):
    updates = [{"album_id": 60, "title": "x"}] * 100_001
    assert "at most 100000 per request" in error_of(api.post("/albums/bulk", json={"updates": updates}), 400)


def test_oversized_body(api, unchanged):
    response = api.post("/albums/bulk", data=b"x" * (17 * 1024 * 1024), headers={"Content-Type": "application/json"})
    error_of(response, 413)


@pytest.mark.parametrize("body, message", [
    ({"multiplier": 1}, "multiplier: must be 2-64, got 1"),
    ({"multiplier": "2"}, "multiplier: must be an integer"),
    ({"multiplier": 2, "x": 1}, "x: unknown field"),
])
def test_bad_duplication_requests(api, body, message):
    assert message in error_of(api.post("/tasks/duplicate", json=body), 400)


@pytest.mark.parametrize("query, message", [("wait=soon", "wait: must be a number"), ("wait=-1", "wait: must be 0-300")])
def test_bad_flush_requests(api, query, message):
    assert message in error_of(api.post(f"/write-back/flush?{query}"), 400)


def test_wrong_method(api):
    error_of(api.request("DELETE", "/albums/1"), 405)
