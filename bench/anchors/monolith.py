"""The monolith anchors: what a team would build instead of write-back, as a Flask
app run with the gateway's worker count and threads, under granian as the gateway is
and under gunicorn (bench.stores.anchor_command).

- `PATCH /albums/<id>` is write-through: one Postgres transaction per request, then
  the cache (a Redis hash, as the system stores rows).
- `GET /albums/<id>` is the monolith read: redis-py straight to the cache, no gRPC
  hop; a miss loads the row from Postgres and caches it.

Configured by ANCHOR_DATABASE_URL, ANCHOR_REDIS_URL, ANCHOR_KEY_PREFIX and
ANCHOR_CACHE_TTL_S; `bench.anchors.monolith:app`.
"""

import json
import os

import psycopg2
import redis
from flask import Flask, jsonify, request
from psycopg2.pool import ThreadedConnectionPool

DATABASE_URL = os.environ["ANCHOR_DATABASE_URL"]
REDIS_URL = os.environ["ANCHOR_REDIS_URL"]
KEY_PREFIX = os.environ["ANCHOR_KEY_PREFIX"]
TTL_S = int(os.environ.get("ANCHOR_CACHE_TTL_S", "3600"))
# One connection per server thread of this worker.
POOL_SIZE = int(os.environ.get("ANCHOR_POOL_SIZE", "8"))

app = Flask(__name__)
cache = redis.Redis.from_url(REDIS_URL, decode_responses=True)
# psycopg2's pools keep only `minconn` connections and close any other one given back:
# with minconn = maxconn, every connection stays open for the next request.
pool = ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, DATABASE_URL)


def album_key(album_id: int) -> str:
    return f"{KEY_PREFIX}album:{album_id}"


def error(status: int, message: str):
    response = jsonify({"error": {"code": "invalid_argument" if status == 400 else "not_found", "message": message}})
    response.status_code = status
    return response


@app.get("/albums/<int:album_id>")
def get_album(album_id):
    row = cache.hgetall(album_key(album_id))
    hit = bool(row)
    if not hit:
        conn = pool.getconn()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT title, artist_id FROM album WHERE album_id = %s", (album_id,))
                found = cur.fetchone()
        finally:
            pool.putconn(conn)
        if found is None:
            return error(404, f"album {album_id} not found")
        row = {"title": found[0], "artist_id": str(found[1])}
        with cache.pipeline(transaction=False) as pipe:
            pipe.hset(album_key(album_id), mapping=row)
            pipe.expire(album_key(album_id), TTL_S)
            pipe.execute()
    response = jsonify({"album_id": album_id, "title": row["title"], "artist_id": int(row["artist_id"])})
    response.headers["X-Cache"] = "HIT" if hit else "MISS"
    return response


@app.patch("/albums/<int:album_id>")
def patch_album(album_id):
    try:
        patch = json.loads(request.data)
    except ValueError:
        return error(400, "request body is not valid JSON")
    if not isinstance(patch, dict) or not patch or set(patch) - {"title", "artist_id"}:
        return error(400, "expected {title?, artist_id?}")
    title, artist_id = patch.get("title"), patch.get("artist_id")
    if title is not None and not (isinstance(title, str) and 1 <= len(title) <= 160):
        return error(400, "title: must be 1-160 characters")
    if artist_id is not None and (isinstance(artist_id, bool) or not isinstance(artist_id, int)):
        return error(400, "artist_id: must be an integer")
    conn = pool.getconn()
    try:
        # One transaction per request; the foreign key checks the artist.
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE album SET title = coalesce(%s, title), artist_id = coalesce(%s, artist_id) "
                "WHERE album_id = %s RETURNING title, artist_id",
                (title, artist_id, album_id),
            )
            row = cur.fetchone()
    except psycopg2.IntegrityError:
        return error(400, f"artist_id: artist {artist_id} does not exist")
    finally:
        pool.putconn(conn)
    if row is None:
        return error(404, f"album {album_id} not found")
    # Then the cache.
    with cache.pipeline(transaction=False) as pipe:
        pipe.hset(album_key(album_id), mapping={"title": row[0], "artist_id": str(row[1])})
        pipe.expire(album_key(album_id), TTL_S)
        pipe.execute()
    return jsonify({"album_id": album_id, "title": row[0], "artist_id": row[1]})
