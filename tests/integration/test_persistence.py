"""The persistence service's SQL against a real, freshly loaded Postgres."""

import pytest

from chinook.entities import get_entity
from persistence_svc import repository
from persistence_svc.db import Database
from persistence_svc.repository import StoredRow

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
    result = repository.apply_writes(db, ALBUM, [
        StoredRow(1, {"title": "A", "artist_id": 2}, 10),
        StoredRow(2, {"title": "B", "artist_id": 2}, 10),
        StoredRow(999_999, {"title": "C", "artist_id": 2}, 10),
    ])
    assert (result.applied_ids, result.stale_ids, result.missing_ids) == ([1, 2], [], [999_999])
    assert query(db, "SELECT album_id, title, artist_id, wb_version FROM album WHERE album_id IN (1, 2) ORDER BY 1") \
        == [(1, "A", 2, 10), (2, "B", 2, 10)]


def test_a_stale_or_redelivered_version_never_overwrites_a_newer_one(db):
    repository.apply_writes(db, ALBUM, [StoredRow(1, {"title": "newer", "artist_id": 1}, 20)])
    stale = repository.apply_writes(db, ALBUM, [StoredRow(1, {"title": "older", "artist_id": 1}, 10)])
    again = repository.apply_writes(db, ALBUM, [StoredRow(1, {"title": "newer", "artist_id": 1}, 20)])
    assert stale.stale_ids == [1] and again.stale_ids == [1]
    assert query(db, "SELECT title, wb_version FROM album WHERE album_id = 1") == [("newer", 20)]


def test_the_newest_of_duplicate_ids_in_one_batch_wins(db):
    repository.apply_writes(db, ALBUM, [
        StoredRow(1, {"title": "v3", "artist_id": 1}, 3),
        StoredRow(1, {"title": "v5", "artist_id": 1}, 5),
        StoredRow(1, {"title": "v4", "artist_id": 1}, 4),
    ])
    assert query(db, "SELECT title FROM album WHERE album_id = 1") == [("v5",)]


def test_values_are_bound_never_spliced_into_sql(db):
    title = "x'); DELETE FROM album; --"
    repository.apply_writes(db, ALBUM, [StoredRow(5, {"title": title, "artist_id": 1}, 1)])
    assert query(db, "SELECT title FROM album WHERE album_id = 5") == [(title,)]
    assert query(db, "SELECT count(*) FROM album") == [(347,)]


def test_refused_rows_are_isolated_and_the_rest_is_written(db):
    original_7 = query(db, "SELECT title, artist_id, wb_version FROM album WHERE album_id = 7")
    rows = [StoredRow(i, {"title": f"ok {i}", "artist_id": 1}, 5) for i in range(1, 41)]
    rows[6] = StoredRow(7, {"title": "no such artist", "artist_id": 999_999}, 5)
    rows[30] = StoredRow(31, {"title": "nor this", "artist_id": 888_888}, 5)
    result = repository.apply_writes(db, ALBUM, rows)
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
    result = repository.apply_writes(db, ALBUM, [
        StoredRow(7, {"artist_id": 1}, 40),
        StoredRow(8, {"title": "whole", "artist_id": 2}, 40),
    ])
    assert result.applied_ids == [7, 8]
    assert query(db, "SELECT title, artist_id, wb_version FROM album WHERE album_id = 7") == [(before[0], 1, 40)]
    assert query(db, "SELECT title, artist_id FROM album WHERE album_id = 8") == [("whole", 2)]


def test_get_versions_leaves_out_missing_ids(db):
    repository.apply_writes(db, ALBUM, [StoredRow(3, {"title": "v", "artist_id": 1}, 12)])
    assert repository.get_versions(db, ALBUM, [3, 4, 999_999]) == {3: 12, 4: 0}
