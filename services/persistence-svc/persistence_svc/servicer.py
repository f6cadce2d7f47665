"""gRPC entry points: turn requests into repository calls and errors into status codes."""

import contextlib
import time

import grpc
import psycopg2

from chinook import metrics
from chinook.entities import ValidationError, get_entity, parse_multiplier
from chinook.grpc_client import from_struct, to_struct
from chinook.grpc_server import abort
from chinook.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from . import repository

ID_CHUNK = 10_000
# Celery's task ids have 36 characters; an id of a few thousand bytes would not fit
# Postgres' index of them, and fail only after the copy.
MAX_OPERATION_ID = 200
# Versions are Redis' clock in microseconds (cache-svc's lua/accept.lua), so a flushed one is
# ahead of this process' clock only by the skew between the two hosts' clocks: well under a
# second with NTP. Ten minutes leaves room for a badly kept clock, and bounds what a
# version from further ahead would do: every later write of its row would be "stale", and
# dropped as durable, until the clock caught up.
MAX_VERSION_AHEAD_S = 600


@contextlib.contextmanager
def status_codes(context):
    try:
        yield
    except ValidationError as exc:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except repository.NotFound as exc:
        abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
    except repository.PreconditionFailed as exc:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        abort(context, grpc.StatusCode.UNAVAILABLE, f"Postgres unavailable: {str(exc).strip()}")
    except psycopg2.DataError as exc:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Postgres refused the data: {str(exc).strip()}")
    except psycopg2.IntegrityError as exc:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"Postgres refused the write: {str(exc).strip()}")


def _check_not_ahead(batch: repository.Batch, now_s: float):
    """Refuses every row when one's version is more than MAX_VERSION_AHEAD_S ahead of now."""
    if not batch.ids:
        return
    versions = batch.columns["version"]
    i = versions.index(max(versions))
    ahead_s = versions[i] / 1_000_000 - now_s
    if ahead_s > MAX_VERSION_AHEAD_S:
        raise ValidationError(
            f"rows[{i}].version: {versions[i]} (id {batch.ids[i]}) is {ahead_s:.0f} s ahead of persistence-svc's "
            f"clock, beyond the {MAX_VERSION_AHEAD_S} s of clock skew allowed (a version is Redis' clock in "
            "microseconds); nothing was written")


class PersistenceServicer(persistence_pb2_grpc.PersistenceServiceServicer):
    def __init__(self, db):
        self.db = db

    def GetRows(self, request, context):
        with status_codes(context):
            entity = get_entity(request.entity)
            rows = repository.get_rows(self.db, entity, list(request.ids))
            if request.as_json:
                return persistence_pb2.GetRowsResponse(
                    rows_json=entity.columns_json((r.id, r.version, r.fields) for r in rows))
            return persistence_pb2.GetRowsResponse(rows=[
                persistence_pb2.Row(id=r.id, fields=to_struct(r.fields), version=r.version) for r in rows
            ])

    def GetVersions(self, request, context):
        with status_codes(context):
            versions = repository.get_versions(self.db, get_entity(request.entity), list(request.ids))
            return persistence_pb2.GetVersionsResponse(ids=list(versions), versions=list(versions.values()))

    def ApplyWrites(self, request, context):
        with status_codes(context):
            entity = get_entity(request.entity)
            if request.rows and request.rows_json:
                raise ValidationError("set rows or rows_json, not both")
            if request.rows_json:
                batch = repository.Batch(request.rows_json, entity.columns_from_json(request.rows_json))
            else:
                # Each row's fields checked on their own first: columnar JSON has no place for
                # a column the entity lacks.
                batch = repository.Batch.of(entity, [
                    repository.StoredRow(r.id, entity.validate_patch(from_struct(r.fields), f"rows[{i}]"), r.version)
                    for i, r in enumerate(request.rows)])
            entity.validate_columns(batch.columns)
            _check_not_ahead(batch, time.time())
            result = repository.apply_writes(self.db, entity, batch)
            metrics.FLUSH_STATEMENTS.labels(entity.name).inc(result.statements)
            return persistence_pb2.ApplyWritesResponse(
                applied_ids=result.applied_ids, stale_ids=result.stale_ids, missing_ids=result.missing_ids,
                failed=[persistence_pb2.FailedRow(id=i, error=error) for i, error in result.failed],
            )

    def ListIds(self, request, context):
        with status_codes(context):
            ids = repository.list_ids(self.db, get_entity(request.entity))
            for start in range(0, len(ids), ID_CHUNK):
                yield persistence_pb2.IdChunk(ids=ids[start:start + ID_CHUNK])

    def DuplicateRows(self, request, context):
        with status_codes(context):
            if not request.operation_id:
                raise ValidationError("operation_id: required, it makes the copy idempotent")
            if len(request.operation_id) > MAX_OPERATION_ID:
                raise ValidationError(f"operation_id: at most {MAX_OPERATION_ID} characters, got "
                                      f"{len(request.operation_id)}")
            entity = get_entity(request.entity)
            multiplier = parse_multiplier(request.multiplier)
            for done, total in repository.duplicate_rows(self.db, entity, multiplier, request.operation_id):
                yield persistence_pb2.DuplicateProgress(done=done, total=total)
