"""The persistence service's SQL against a real, freshly loaded Postgres."""

import threading
import time
from urllib.parse import urlsplit

import pytest

from chinook.entities import get_entity
from persistence_svc import repository
from persistence_svc.db import Database
from persistence_svc.repository import Batch, StoredRow

ALBUM = get_entity("album")


@pytest.fixture
def db(fresh_database):
    database = Database(fresh_database, max_connections=4)
    yield database
    database.close()


def query(db, sql, params=()):
    with db.transaction() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def apply_writes(db, rows):
    """repository.apply_writes of album StoredRow rows, as the batch of columnar JSON a task carries."""
    return repository.apply_writes(db, ALBUM, Batch.of(ALBUM, rows))


def test_sql_loads_every_chinook_table_with_its_rows(db):
    counts = {
        "album": 347, "artist": 275, "customer": 59, "employee": 8, "genre": 25, "invoice": 412,
        "invoice_line": 2240, "media_type": 5, "playlist": 18, "playlist_track": 8715, "track": 3503,
    }
    for table, expected in counts.items():
        assert query(db, f"SELECT count(*) FROM {table}") == [(expected,)], table
    assert query(db, "SELECT title, artist_id FROM album WHERE album_id = 193") == [("Blood Sugar Sex Magik", 127)]
    assert query(db, "SELECT name FROM track WHERE track_id = 728") == [("Woman Of The World (Ao Vivo)",)]


def test_get_rows_leaves_out_missing_ids(db):
    rows = repository.get_rows(db, ALBUM, [1, 193, 999_999])
    assert [(r.id, r.fields, r.version) for r in rows] == [
        (1, {"title": "For Those About To Rock We Salute You", "artist_id": 1}, 0),
        (193, {"title": "Blood Sugar Sex Magik", "artist_id": 127}, 0),
    ]


def test_apply_writes_writes_newer_versions_in_one_statement(db):
    result = apply_writes(db, [
        StoredRow(1, {"title": "A", "artist_id": 2}, 10),
        StoredRow(2, {"title": "B", "artist_id": 2}, 10),
        StoredRow(999_999, {"title": "C", "artist_id": 2}, 10),
    ])
    assert (result.applied_ids, result.stale_ids, result.missing_ids) == ([1, 2], [], [999_999])
    assert query(db, "SELECT album_id, title, artist_id, wb_version FROM album WHERE album_id IN (1, 2) ORDER BY 1") \
        == [(1, "A", 2, 10), (2, "B", 2, 10)]


def test_a_stale_or_redelivered_version_never_overwrites_a_newer_one(db):
    apply_writes(db, [StoredRow(1, {"title": "newer", "artist_id": 1}, 20)])
    stale = apply_writes(db, [StoredRow(1, {"title": "older", "artist_id": 1}, 10)])
    again = apply_writes(db, [StoredRow(1, {"title": "newer", "artist_id": 1}, 20)])
    assert stale.stale_ids == [1] and again.stale_ids == [1]
    assert query(db, "SELECT title, wb_version FROM album WHERE album_id = 1") == [("newer", 20)]


def test_the_newest_of_duplicate_ids_in_one_batch_wins(db):
    apply_writes(db, [
        StoredRow(1, {"title": "v3", "artist_id": 1}, 3),
        StoredRow(1, {"title": "v5", "artist_id": 1}, 5),
        StoredRow(1, {"title": "v4", "artist_id": 1}, 4),
    ])
    assert query(db, "SELECT title FROM album WHERE album_id = 1") == [("v5",)]


def test_values_are_bound_never_spliced_into_sql(db):
    title = "x'); DELETE FROM album; --"
    apply_writes(db, [StoredRow(5, {"title": title, "artist_id": 1}, 1)])
    assert query(db, "SELECT title FROM album WHERE album_id = 5") == [(title,)]
    assert query(db, "SELECT count(*) FROM album") == [(347,)]


def test_refused_rows_are_isolated_and_the_rest_is_written(db):
    original_7 = query(db, "SELECT title, artist_id, wb_version FROM album WHERE album_id = 7")
    rows = [StoredRow(i, {"title": f"ok {i}", "artist_id": 1}, 5) for i in range(1, 41)]
    rows[6] = StoredRow(7, {"title": "no such artist", "artist_id": 999_999}, 5)
    rows[30] = StoredRow(31, {"title": "nor this", "artist_id": 888_888}, 5)
    result = apply_writes(db, rows)
    assert [i for i, _ in result.failed] == [7, 31]
    assert "album_artist_id_fkey" in result.failed[0][1]
    assert result.applied_ids == [i for i in range(1, 41) if i not in (7, 31)]
    assert result.statements > 2, "isolation halves the batch"
    assert query(db, "SELECT title FROM album WHERE album_id = 6") == [("ok 6",)]
    assert query(db, "SELECT title, artist_id, wb_version FROM album WHERE album_id = 7") == original_7


def test_duplication_multiplies_the_table_with_new_ids_and_progress(db):
    progress = list(repository.duplicate_rows(db, ALBUM, 3, "op-1"))
    assert progress[0] == (0, 694) and progress[-1] == (694, 694)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert query(db, "SELECT count(*), count(DISTINCT album_id), max(album_id) FROM album") == [(1041, 1041, 1041)]
    assert query(db, "SELECT title, artist_id FROM album WHERE album_id = 193 + 347 * 2") \
        == [("Blood Sugar Sex Magik", 127)]


def test_a_redelivered_duplication_does_not_copy_twice(db):
    list(repository.duplicate_rows(db, ALBUM, 2, "op-1"))
    replay = list(repository.duplicate_rows(db, ALBUM, 2, "op-1"))
    assert replay == [(347, 347)]
    assert query(db, "SELECT count(*) FROM album") == [(694,)]


def test_duplication_beyond_the_int_range_is_refused(db):
    with pytest.raises(repository.PreconditionFailed, match="int range"):
        list(repository.duplicate_rows(db, ALBUM, 10_000_000, "op-big"))
    assert query(db, "SELECT count(*) FROM album") == [(347,)]


def test_list_ids_is_ordered(db):
    ids = repository.list_ids(db, ALBUM)
    assert ids == sorted(ids) and len(ids) == 347


def test_ping_names_the_url_and_the_fix():
    with pytest.raises(ConnectionError, match=r"cannot reach Postgres at postgresql://postgres:\*\*\*@127.0.0.1:1/x.*DATABASE_URL"):
        Database("postgresql://postgres:secret@127.0.0.1:1/x").ping()


def test_a_partial_row_writes_only_its_columns(db):
    before = query(db, "SELECT title, artist_id FROM album WHERE album_id = 7")[0]
    result = apply_writes(db, [
        StoredRow(7, {"artist_id": 1}, 40),
        StoredRow(8, {"title": "whole", "artist_id": 2}, 40),
    ])
    assert result.applied_ids == [7, 8]
    assert query(db, "SELECT title, artist_id, wb_version FROM album WHERE album_id = 7") == [(before[0], 1, 40)]
    assert query(db, "SELECT title, artist_id FROM album WHERE album_id = 8") == [("whole", 2)]


def test_get_versions_leaves_out_missing_ids(db):
    apply_writes(db, [StoredRow(3, {"title": "v", "artist_id": 1}, 12)])
    assert repository.get_versions(db, ALBUM, [3, 4, 999_999]) == {3: 12, 4: 0}


@pytest.fixture
def role_db(fresh_database):
    """The same database as persistence-svc's own role, whose grants the SQL must fit. A
    statement that waits for a lock fails after 10 s rather than hang the test."""
    parts = urlsplit(fresh_database)
    netloc = f"chinook_persistence@{parts.hostname}:{parts.port or 5432}"
    database = Database(parts._replace(netloc=netloc, query="options=-c%20lock_timeout%3D10s").geturl(),
                        max_connections=4)
    yield database
    database.close()


def test_write_back_goes_on_during_a_duplication_and_each_copy_takes_its_row_as_copied(db, role_db):
    duplication = repository.duplicate_rows(role_db, ALBUM, 3, "op-during")
    assert next(duplication) == (0, 694)
    assert next(duplication) == (347, 694)  # the first copy is made, uncommitted
    original_title = query(db, "SELECT title FROM album WHERE album_id = 5")[0][0]
    # Were the table locked, this would wait for the duplication (lock_timeout ends it).
    result = apply_writes(role_db, [StoredRow(5, {"title": "written meanwhile"}, 7)])
    assert result.applied_ids == [5]
    assert list(duplication) == [(694, 694)]
    assert query(db, "SELECT album_id, title, wb_version FROM album WHERE album_id IN (5, 352, 699) ORDER BY 1") \
        == [(5, "written meanwhile", 7), (352, original_title, 0), (699, "written meanwhile", 0)]


def test_duplications_of_a_table_run_one_after_the_other(db, role_db):
    first = repository.duplicate_rows(role_db, ALBUM, 2, "op-first")
    assert next(first) == (0, 347)
    assert next(first) == (347, 347)  # the copy is made, uncommitted
    outcome = {}

    def second():
        try:
            outcome["progress"] = list(repository.duplicate_rows(role_db, ALBUM, 2, "op-second"))
        except Exception as exc:  # noqa: BLE001 - reported below, where the test can fail on it
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    wait_until_waiting_for_a_lock(db)
    assert list(first) == []  # committed
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in outcome, outcome
    # The second read the table the first left: 694 rows, copied once more.
    assert outcome["progress"][-1] == (694, 694)
    assert query(db, "SELECT count(*), count(DISTINCT album_id), max(album_id) FROM album") == [(1388, 1388, 1388)]
    assert query(db, "SELECT operation_id FROM wb_operation ORDER BY finished_at") == [("op-first",), ("op-second",)]


def wait_until_waiting_for_a_lock(db, deadline_s: float = 60):
    """Returns once a session of the database waits for a lock; fails after deadline_s."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND wait_event_type = 'Lock'") != [(0,)]:
            return
        time.sleep(0.05)
    pytest.fail("no session came to wait for the duplication's lock")

