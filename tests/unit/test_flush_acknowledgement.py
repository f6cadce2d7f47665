"""What a worker acknowledges after a batch: the ids and versions of exactly the rows
Postgres holds now (written, or already newer), in the batch's order, and nothing when it
holds none."""

import json

from chinook.entities import get_entity, new_claim_id
from chinook.persistence.v1 import persistence_pb2
from worker.jobs import apply_writes

ALBUM = get_entity("album")
CLAIM = new_claim_id()
ROWS = [(7, 101, {"title": "a", "artist_id": 1}), (3, 102, {"title": "b", "artist_id": 1}),
        (9, 103, {"title": "c", "artist_id": 1}), (5, 104, {"title": "d", "artist_id": 1})]


class Persistence:
    def __init__(self, result):
        self.result = result

    def apply_writes(self, entity, rows_json):
        return self.result


class Cache:
    def __init__(self):
        self.acknowledged = []

    def ack_flushed(self, entity, ids, versions, claim):
        self.acknowledged.append((entity, list(ids), list(versions), claim))


def run(result) -> Cache:
    rows_json = ALBUM.columns_json(ROWS)
    cache = Cache()
    apply_writes(Persistence(result), cache, "album", rows_json, json.loads(rows_json), CLAIM)
    return cache


def test_every_row_durable_is_acknowledged_in_order():
    cache = run(persistence_pb2.ApplyWritesResponse(applied_ids=[3, 7, 5], stale_ids=[9]))
    assert cache.acknowledged == [("album", [7, 3, 9, 5], [101, 102, 103, 104], CLAIM)]


def test_only_the_rows_postgres_holds_are_acknowledged():
    refused = persistence_pb2.ApplyWritesResponse(
        applied_ids=[9], stale_ids=[7], missing_ids=[5],
        failed=[persistence_pb2.FailedRow(id=3, error="refused")])
    cache = run(refused)
    assert cache.acknowledged == [("album", [7, 9], [101, 103], CLAIM)]


def test_nothing_durable_acknowledges_nothing():
    cache = run(persistence_pb2.ApplyWritesResponse(missing_ids=[7, 3, 9, 5]))
    assert cache.acknowledged == []
