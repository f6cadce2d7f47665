"""What the tasks do, as plain functions over the two gRPC clients."""

import logging
from dataclasses import dataclass, field
from itertools import compress

import grpc

from chinook.entities import get_entity

log = logging.getLogger(__name__)

# Codes worth another try later; anything else will fail the same way again.
TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
}


class TransientError(Exception):
    """A service is down or overloaded; the task is retried with backoff."""


def classify(exc: grpc.RpcError) -> Exception:
    message = f"{exc.code().name}: {exc.details()}"
    return TransientError(message) if exc.code() in TRANSIENT_CODES else RuntimeError(message)


@dataclass
class BatchOutcome:
    written: int
    stale: int
    # ((id, version, fields) row, Postgres' error) for each row it refused
    refused: list = field(default_factory=list)


def apply_writes(persistence, cache, entity: str, rows_json: str, columns: dict, claim: str) -> BatchOutcome:
    """Writes a batch of rows, columnar JSON passed on as it came (columns: the same,
    parsed), in one statement, then tells the cache which versions are durable, under the
    claim the rows were claimed with, so it can mark those rows clean. Rows Postgres
    refuses are returned, not raised: the others must not wait for them."""
    try:
        result = persistence.apply_writes(entity, rows_json)
        durable = set(result.applied_ids) | set(result.stale_ids)
        if durable:
            ids, versions = columns["id"], columns["version"]
            kept = [row_id in durable for row_id in ids]
            if not all(kept):
                ids, versions = list(compress(ids, kept)), list(compress(versions, kept))
            cache.ack_flushed(entity, ids, versions, claim)
    except grpc.RpcError as exc:
        raise classify(exc) from None
    errors = {f.id: f.error for f in result.failed}
    errors.update({i: "the row no longer exists in Postgres" for i in result.missing_ids})
    refused = []
    if errors:
        refused = [(row, errors[row[0]]) for row in get_entity(entity).rows_from_columns_json(rows_json)
                   if row[0] in errors]
    return BatchOutcome(len(result.applied_ids), len(result.stale_ids), refused)


def dead_letter(cache, entity: str, refused: list, claim: str) -> int:
    """Hands rows Postgres kept refusing to the cache's dead letters."""
    try:
        return cache.dead_letter(entity, [(row[0], row[1], error) for row, error in refused], claim).dead_lettered
    except grpc.RpcError as exc:
        raise classify(exc) from None


def duplicate_rows(persistence, entity: str, multiplier: int, operation_id: str, on_progress, timeout_s: float):
    """Multiplies the entity's table, reporting (done, total) as Postgres copies."""
    done = total = 0
    try:
        for progress in persistence.duplicate_rows(entity, multiplier, operation_id, timeout_s):
            done, total = progress.done, progress.total
            on_progress(done, total)
    except grpc.RpcError as exc:
        raise classify(exc) from None
    return {"entity": entity, "multiplier": multiplier, "inserted": done, "total": total}
