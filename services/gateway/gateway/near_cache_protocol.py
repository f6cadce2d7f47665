"""How a request reads and writes rows through this process' near cache, and the
consistency token its answer carries.

A read takes the row from the near cache where NearCache.get allows it (for a read
presenting a token, only while the process has applied every change the token covers),
else through cache-svc, keeping it under a reservation. A write reserves the row, and
before its response marks it written here, so that a client reading through this process
sees its own write; a bulk drops its rows from here likewise.
"""

import json
from typing import NamedTuple

from flask import Response, current_app

from chinook import tracing
from chinook.cache.v1 import cache_pb2

from . import consistency
from .batching import CallBatcher
from .errors import STATUS_BY_NUMBER, CallFailed
from .extensions import near_cache
from .near_cache import NO_TOKEN, PENDING, NearCache

WRITE_BACK_HEADER = {
    cache_pb2.WRITE_BACK_STATE_CLEAN: "clean",
    cache_pb2.WRITE_BACK_STATE_PENDING: "pending",
    cache_pb2.WRITE_BACK_STATE_DEAD_LETTERED: "dead-letter",
}


class RowRead(NamedTuple):
    body: bytes  # the row's JSON, as the API shows it
    tier: str  # near, redis or postgres
    state: str  # its write-back state: clean, pending or dead-letter
    version: int


def read_headers(row: RowRead) -> list[tuple[str, str]]:
    """The headers of a row's read: the tier it came from and its write-back state."""
    return [("X-Cache", "MISS" if row.tier == "postgres" else "HIT"), ("X-Cache-Tier", row.tier),
            ("X-Write-Back", row.state)]


def accepted_body(primary_key: str, result: cache_pb2.RowResult) -> str:
    """The body of the 202 that answers a row's update."""
    return json.dumps({primary_key: result.id, "version": result.version, "write_back": "pending"})


def answer_token(response: Response, token: int, version: int) -> Response:
    """The response, giving the client the newest of its token and `version` as its token."""
    return consistency.answer(response, max(token, version), current_app.extensions["token_max_age_s"])


def read_row(near: NearCache, batcher: CallBatcher, entity_name: str, row_id: int,
             token: int = NO_TOKEN) -> RowRead:
    """The row from the near cache `near` (for a read presenting a token, where
    NearCache.get allows it), or through cache-svc (in a call of `batcher`), keeping it
    there."""
    key = (entity_name, row_id)
    entry = near.get(key, token)
    if entry is not None:
        return RowRead(entry.body, "near", entry.state, entry.version)
    reservation = near.reserve(key)
    result = batcher.submit(cache_pb2.RowKey(entity=entity_name, id=row_id))
    if result.code:
        raise CallFailed(STATUS_BY_NUMBER[result.code], result.message)
    body, state = result.row_json.encode(), WRITE_BACK_HEADER[result.write_back]
    near.fill(key, reservation, result.version, state, body)
    return RowRead(body, "redis" if result.cache_hit else "postgres", state, result.version)


def update_row(near: NearCache, batcher: CallBatcher, entity_name: str, row_id: int,
               fields_json: str) -> cache_pb2.RowResult:
    """Writes the columns of `fields_json` through cache-svc (in a call of `batcher`); the
    row accepted (id and version) once this process' near cache, `near`, shows the write."""
    key = (entity_name, row_id)
    reservation = near.reserve(key)
    patch = cache_pb2.RowPatch(entity=entity_name, id=row_id, fields_json=fields_json)
    # Several requests' updates may travel in one call: each carries its own request's
    # sampling decision, with its trace context when sampled.
    patch.trace_unsampled = tracing.carry_decision(patch.trace_context)
    result = batcher.submit(patch)
    if result.code:
        raise CallFailed(STATUS_BY_NUMBER[result.code], result.message)
    # Before the response: a client reading through this process sees its own write
    # (here, or through cache-svc where the row is not whole in the cache yet), even
    # where a read of the row in flight has taken the reservation over.
    near.written(entity_name, [row_id], result.version)
    if result.row_json:
        near.fill(key, reservation, result.version, PENDING, result.row_json.encode())
    return result


def bulk_written(entity_name: str, ids, max_version: int):
    """A bulk wrote `ids` (every row of the entity when None): its rows leave this
    process' near cache before the response, so that the client reads its writes here."""
    near_cache().written(entity_name, ids, max_version)
