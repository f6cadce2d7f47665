"""What the tasks do, as plain functions over the two gRPC clients."""

import logging

import grpc

from chinook.grpc_client import to_struct
from chinook.persistence.v1 import persistence_pb2

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


def apply_writes(persistence, cache, entity: str, rows: list) -> dict:
    """Writes a batch of [id, version, fields] in one statement, then tells the cache
    which versions are durable so it can mark those rows clean."""
    messages = [persistence_pb2.Row(id=i, version=v, fields=to_struct(f)) for i, v, f in rows]
    try:
        result = persistence.apply_writes(entity, messages)
        durable = set(result.applied_ids) | set(result.stale_ids)
        cache.ack_flushed(entity, [(i, v) for i, v, _ in rows if i in durable], written=len(result.applied_ids))
    except grpc.RpcError as exc:
        raise classify(exc) from None
    if result.missing_ids:
        # Rows are never deleted here; if one was, its writes stay pending and visible.
        log.error("%s rows %s no longer exist in Postgres; their writes stay pending", entity,
                  list(result.missing_ids)[:10])
    return {"written": len(result.applied_ids), "stale": len(result.stale_ids), "missing": len(result.missing_ids)}


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
