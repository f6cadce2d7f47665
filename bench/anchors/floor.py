"""The physical floor: the least Redis and Postgres can do for the same work.

- one Redis pipeline that writes the same keys,
- one set-based statement (`UPDATE ... FROM unnest(...)`) that writes the same rows,
- `INSERT ... SELECT`, the copy rate of the table duplication.

Each runs against the anchor's own database and key prefix, and is timed from the
client's side, as the system is: building and sending the request included.
"""

import time

import psycopg2
import redis


def redis_pipeline_write(client: redis.Redis, key_prefix: str, rows: list[tuple[int, str]]) -> float:
    """Writes a title into the hash of each (id, title) in one pipeline; returns seconds."""
    started = time.perf_counter()
    with client.pipeline(transaction=False) as pipe:
        for album_id, title in rows:
            pipe.hset(f"{key_prefix}album:{album_id}", "title", title)
        pipe.execute()
    return time.perf_counter() - started


def _timed_statement(database_url: str, query: str, params) -> tuple[int, float]:
    """Runs one statement in its own transaction; returns (rows, seconds to commit),
    connecting excluded."""
    conn = psycopg2.connect(database_url)
    try:
        started = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            rows = cur.rowcount
        return rows, time.perf_counter() - started
    finally:
        conn.close()


def sql_set_update(database_url: str, rows: list[tuple[int, str]]) -> float:
    """Writes the titles of (id, title) rows with one statement; returns seconds."""
    written, seconds = _timed_statement(
        database_url,
        "UPDATE album SET title = u.title FROM unnest(%s::int[], %s::varchar[]) AS u(id, title) "
        "WHERE album.album_id = u.id",
        ([r[0] for r in rows], [r[1] for r in rows]),
    )
    if written != len(rows):
        raise RuntimeError(f"floor UPDATE wrote {written} rows, expected {len(rows)}")
    return seconds


def insert_select_copy(database_url: str, multiplier: int) -> tuple[int, float]:
    """Multiplies the album table with one `INSERT ... SELECT` (copy k gets ids shifted by
    k times the largest id, as the system's duplication does); returns (rows, seconds)."""
    return _timed_statement(
        database_url,
        "INSERT INTO album (album_id, title, artist_id) "
        "SELECT a.album_id + k * m.max_id, a.title, a.artist_id "
        "FROM album AS a, (SELECT max(album_id) AS max_id FROM album) AS m, "
        "generate_series(1, %s - 1) AS k",
        (multiplier,),
    )
