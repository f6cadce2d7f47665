"""GET /write-back/rows/<entity>/<id>: a row as the cache and Postgres hold it, and where its
write is, on a stack whose flusher claims nothing until asked (POST /write-back/flush), so
that a write stays pending, or in flight while the worker is stopped, as long as a test needs."""

import time

import pytest

from testkit.api import Api
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    with own_stack("rows", tmp_path_factory.mktemp("rows"), {
        "WRITEBACK_DELAY_MS": "600000",
        # Refused writes reach the dead letters in well under a second.
        "WRITEBACK_MAX_ATTEMPTS": "3",
        "WRITEBACK_RETRY_BACKOFF_MS": "50",
    }) as stack:
        yield stack, Api(stack), stack.row_store()


def inspect(api, entity, row_id):
    response = api.get(f"/write-back/rows/{entity}/{row_id}")
    assert response.status_code == 200, response.text
    return response.json()


def redis_now_s(store):
    return store.now_ms() / 1000


def expect_state(api, entity, row_id, state, timeout_s=30):
    """The inspection once the row's state is `state` (the flusher claims on its own tick)."""
    deadline = time.monotonic() + timeout_s
    body = inspect(api, entity, row_id)
    while body["cache"]["state"] != state and time.monotonic() < deadline:
        time.sleep(0.05)
        body = inspect(api, entity, row_id)
    assert body["cache"]["state"] == state, body
    return body


def album_in_postgres(api, album_id):
    [(title, artist_id, wb_version)] = api.sql(
        "SELECT title, artist_id, wb_version FROM album WHERE album_id = %s", (album_id,))
    return {"album_id": album_id, "title": title, "artist_id": artist_id}, wb_version


def test_a_clean_row_agrees_with_postgres(held):
    _, api, _ = held
    shown = api.get("/albums/261").json()
    body = inspect(api, "album", 261)
    value, wb_version = album_in_postgres(api, 261)
    assert (body["entity"], body["id"], body["agree"]) == ("album", 261, True)
    assert body["cache"] | {"since": None} == {"present": True, "value": shown, "version": wb_version,
                                               "state": "clean", "since": None, "partial": False}
    assert isinstance(body["cache"]["since"], float)
    assert body["postgres"] == {"present": True, "value": value, "wb_version": wb_version}
    assert value == shown


def test_a_write_is_pending_until_a_flush_makes_it_durable(held):
    _, api, store = held
    before_s = redis_now_s(store)
    accepted = api.patch("/albums/262", json={"title": "Where is my write?"})
    assert accepted.status_code == 202
    version = accepted.json()["version"]
    body = inspect(api, "album", 262)
    stored, wb_version = album_in_postgres(api, 262)
    assert body["cache"]["state"] == "pending" and body["agree"] is False
    assert body["cache"]["version"] == version > wb_version == body["postgres"]["wb_version"]
    assert body["cache"]["value"] == {**stored, "title": "Where is my write?"}
    assert body["postgres"]["value"] == stored
    assert before_s - 0.001 <= body["cache"]["since"] <= redis_now_s(store), "pending since it was accepted"

    api.flush()
    body = inspect(api, "album", 262)
    assert body["cache"]["state"] == "clean" and body["agree"] is True
    assert body["cache"]["version"] == body["postgres"]["wb_version"] == version
    assert body["postgres"]["value"] == body["cache"]["value"] == album_in_postgres(api, 262)[0]
    assert body["postgres"]["value"]["title"] == "Where is my write?"


def test_a_claimed_write_is_in_flight_until_a_worker_writes_it(held):
    stack, api, store = held
    stack.stop("write-back-worker")
    try:
        version = api.patch("/albums/263", json={"title": "In flight"}).json()["version"]
        assert inspect(api, "album", 263)["cache"]["state"] == "pending"
        claimed_after_s = redis_now_s(store)
        assert api.post("/write-back/flush").status_code == 202
        body = expect_state(api, "album", 263, "in_flight")
        assert claimed_after_s - 0.001 <= body["cache"]["since"] <= redis_now_s(store), "in flight since the claim"
        assert body["cache"]["version"] == version and body["agree"] is False
        assert body["postgres"]["value"]["title"] != "In flight"
    finally:
        stack.start("write-back-worker")
    api.flush()
    body = inspect(api, "album", 263)
    assert body["cache"]["state"] == "clean" and body["postgres"]["wb_version"] == version and body["agree"]


@pytest.fixture
def poison_constraint(held):
    """A constraint added after writes were accepted: Postgres refuses titles starting with POISON."""
    _, api, _ = held
    with api.poison_titles_refused():
        yield


def test_a_refused_write_is_a_dead_letter_since_postgres_refused_it(held, poison_constraint):
    _, api, _ = held
    version = api.patch("/albums/264", json={"title": "POISON"}).json()["version"]
    api.post("/write-back/flush")
    body = expect_state(api, "album", 264, "dead_letter")
    [entry] = [e for e in api.get("/write-back/dead-letters").json()["dead_letters"] if e["key"] == "album:264"]
    assert body["cache"]["since"] == entry["failed_at"]
    assert body["cache"]["version"] == version and body["cache"]["value"]["title"] == "POISON"
    assert body["postgres"]["wb_version"] < version and body["agree"] is False
    assert api.delete("/write-back/dead-letters/album:264").status_code == 200
    body = inspect(api, "album", 264)
    assert body["cache"]["state"] == "absent" and body["agree"] is True


def test_a_row_the_cache_does_not_hold_is_absent_and_stays_so(held):
    _, api, store = held
    api.flush()
    store.redis.delete(store.keys.row_key("artist", 265))  # as an eviction would
    body = inspect(api, "artist", 265)
    assert body == {
        "entity": "artist", "id": 265,
        "cache": {"present": False, "value": None, "version": None, "state": "absent", "since": None,
                  "partial": False},
        "postgres": {"present": True, "value": {"artist_id": 265, "name": body["postgres"]["value"]["name"]},
                     "wb_version": body["postgres"]["wb_version"]},
        "agree": True,
    }
    assert api.sql("SELECT name FROM artist WHERE artist_id = 265") == [(body["postgres"]["value"]["name"],)]
    assert store.get("artist", 265) is None, "inspecting a row does not load it into the cache"


def test_a_bulk_write_of_a_row_not_cached_is_partial(held):
    _, api, store = held
    api.flush()
    store.redis.delete(store.keys.row_key("album", 266))
    assert api.post("/albums/bulk", json={"updates": [{"album_id": 266, "title": "Bulk"}]}).status_code == 202
    body = inspect(api, "album", 266)
    assert body["cache"] | {"since": None, "version": None} == {
        "present": True, "value": {"album_id": 266, "title": "Bulk"}, "version": None, "state": "pending",
        "since": None, "partial": True}
    assert body["agree"] is False
    api.flush()
    body = inspect(api, "album", 266)
    assert body["cache"]["state"] == "clean" and body["agree"] is True
    assert body["postgres"]["value"]["title"] == "Bulk"


def test_neither_side_holding_the_row_is_404(held):
    _, api, _ = held
    response = api.get("/write-back/rows/album/999999")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "album 999999 not found"}


@pytest.mark.parametrize("path, message", [
    ("track/1", "unknown entity 'track'; known: album, artist"),
    ("album/abc", "album_id: must be a positive integer, got 'abc'"),
    ("artist/0", "artist_id: 0 is out of range"),
    ("album/2147483648", "album_id: 2147483648 is out of range"),
])
def test_an_unknown_entity_or_a_bad_id_is_400(held, path, message):
    _, api, _ = held
    response = api.get(f"/write-back/rows/{path}")
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "invalid_argument", "message": message}
