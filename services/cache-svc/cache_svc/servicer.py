"""gRPC entry points of the cache service: requests in, WriteBack calls, status codes out."""

import contextlib
import json
import math
import re

import grpc
import kombu.exceptions
import redis

from chinook import tracing
from chinook.cache.v1 import cache_pb2, cache_pb2_grpc
from chinook.celery_setup import QueueRefused
from chinook.entities import ValidationError, get_entity, parse_multiplier
from chinook.grpc_client import from_struct
from chinook.grpc_server import abort

from .changes import ChangeRelay, Unavailable
from .functions import FunctionsMissing
from .keys import LayoutError, ShardRetired
from .store import Backpressure
from .transport import NotReplicated
from .writeback import Inspection, NotFound, WriteBack, updates_from_json

CLEAN = cache_pb2.WRITE_BACK_STATE_CLEAN
PENDING = cache_pb2.WRITE_BACK_STATE_PENDING
DEAD_LETTERED = cache_pb2.WRITE_BACK_STATE_DEAD_LETTERED
MAX_DEAD_LETTERS_LISTED = 1000
# Celery's task ids: UUIDs.
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status an error of the write-back logic or its stores maps to, if any."""
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, Backpressure):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, (NotReplicated, LayoutError, ShardRetired, FunctionsMissing)):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                        redis.exceptions.TryAgainError, redis.exceptions.RedisClusterException)):
        # A cluster answers CLUSTERDOWN or TRYAGAIN while a failover or a resharding runs.
        return grpc.StatusCode.UNAVAILABLE, f"Redis unavailable: {exc}"
    if isinstance(exc, kombu.exceptions.OperationalError):
        return grpc.StatusCode.UNAVAILABLE, f"RabbitMQ unavailable: {exc}"
    if isinstance(exc, QueueRefused):
        # A status message stays short; cache-svc's log has what to do.
        return grpc.StatusCode.UNAVAILABLE, exc.summary
    if isinstance(exc, grpc.RpcError):
        # A failure of the persistence service, passed on with its own code; one that
        # is stopping or restarting cancels calls: worth a retry like any outage.
        code = grpc.StatusCode.UNAVAILABLE if exc.code() == grpc.StatusCode.CANCELLED else exc.code()
        return code, f"persistence service: {exc.details()}"
    return None


@contextlib.contextmanager
def status_codes(context):
    try:
        yield
    except (ValidationError, NotFound, Backpressure, NotReplicated, LayoutError, ShardRetired, FunctionsMissing,
            redis.RedisError, redis.exceptions.RedisClusterException, kombu.exceptions.OperationalError,
            QueueRefused, grpc.RpcError) as exc:
        status = status_of(exc)
        if status is None:
            raise
        abort(context, *status)


def _row_result(row_id: int, entity_name: str, row, error, cache_hit: bool = False) -> cache_pb2.RowResult:
    """One read's or update's outcome: the row, or the status of its error."""
    if error is None:
        # A partial row is not shown: completing it would cost a read of Postgres.
        row_json = "" if row.partial else get_entity(entity_name).row_json(row.id, row.fields)
        return cache_pb2.RowResult(id=row.id, version=row.version, cache_hit=cache_hit,
                                   write_back=_write_back_state(row), row_json=row_json)
    code, message = status_of(error) or (grpc.StatusCode.INTERNAL, str(error))
    return cache_pb2.RowResult(id=row_id, code=code.value[0], message=message)


def _write_back_state(row) -> int:
    if row.dead_lettered:
        return DEAD_LETTERED
    return PENDING if row.dirty else CLEAN


def _dead_letter_message(entry, row) -> cache_pb2.DeadLetterEntry:
    message = cache_pb2.DeadLetterEntry(entity=entry.entity, id=entry.id, version=entry.version,
                                        error=entry.error, failed_at=entry.failed_at)
    if row is not None:
        entity = get_entity(entry.entity)
        message.fields.update(entity.columns_from_store(row.fields) if row.partial else entity.row_from_store(row.fields))
    return message


def _inspection_message(inspection: Inspection) -> cache_pb2.RowInspection:
    entity = inspection.entity
    message = cache_pb2.RowInspection(entity=entity.name, id=inspection.id, agree=inspection.agree)
    if inspection.cached is None:
        message.cache.state = cache_pb2.CACHED_ROW_STATE_ABSENT
    else:
        cached = inspection.cached
        message.cache.state = cache_pb2.CachedRowState.Value(f"CACHED_ROW_STATE_{cached.state.upper()}")
        message.cache.row_json = json.dumps({entity.primary_key: inspection.id, **inspection.cached_values})
        message.cache.version = cached.row.version
        message.cache.partial = cached.row.partial
        if cached.since is not None:
            message.cache.since = cached.since
    if inspection.stored is not None:
        version, values = inspection.stored
        message.postgres.present = True
        message.postgres.row_json = json.dumps(
            {entity.primary_key: inspection.id, **{name: values.get(name) for name in entity.column_names}})
        message.postgres.wb_version = version
    return message


def _status_message(status) -> cache_pb2.WriteBackStatus:
    return cache_pb2.WriteBackStatus(
        pending=status.pending, oldest_pending_age_s=status.oldest_pending_age_s,
        accepted_total=status.accepted_total, flushed_total=status.flushed_total, failed=status.failed,
    )


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, write_back: WriteBack, publisher, relay: ChangeRelay):
        self.write_back = write_back
        self.publisher = publisher
        self.relay = relay

    def GetRow(self, request, context):
        with status_codes(context):
            result = self.write_back.get(request.entity, request.id)
            entity = get_entity(request.entity)
            row = cache_pb2.Row(entity=entity.name, id=result.row.id, version=result.row.version)
            if request.include_fields:
                row.fields.update(entity.row_from_store(result.row.fields))
            return cache_pb2.GetRowResponse(row=row, cache_hit=result.cache_hit,
                                            write_back=_write_back_state(result.row),
                                            row_json=entity.row_json(result.row.id, result.row.fields))

    def GetRows(self, request, context):
        with status_codes(context):
            outcomes = self.write_back.get_each([(k.entity, k.id) for k in request.keys])
            return cache_pb2.GetRowsResponse(results=[
                _row_result(k.id, k.entity, o.result and o.result.row, o.error, o.result and o.result.cache_hit)
                for k, o in zip(request.keys, outcomes, strict=False)
            ])

    def UpdateRows(self, request, context):
        with status_codes(context):
            patches = [(p.entity, p.id, p.fields_json) for p in request.patches]
            if tracing.enabled():
                with tracing.accept_spans(request.patches) as links:
                    outcomes = self.write_back.update_each(patches, links)
            else:
                outcomes = self.write_back.update_each(patches)
            return cache_pb2.UpdateRowsResponse(results=[
                _row_result(p.id, p.entity, o.row, o.error) for p, o in zip(request.patches, outcomes, strict=False)
            ])

    def WatchChanges(self, request, context):
        try:
            subscription = self.relay.subscribe()
        except Unavailable as exc:
            abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        context.add_callback(subscription.close)
        yield cache_pb2.ChangeBatch(subscribed=True)
        for batch, queued_at in subscription:
            if batch:
                yield cache_pb2.ChangeBatch(changes_json=batch)
            else:
                yield cache_pb2.ChangeBatch(heartbeat_at_ms=int(queued_at * 1000))
        abort(context, grpc.StatusCode.UNAVAILABLE, f"change stream ended: {subscription.end_reason}")

    def UpdateRow(self, request, context):
        with status_codes(context):
            version = self.write_back.update(request.entity, request.update.id, from_struct(request.update.fields))
            return cache_pb2.UpdateRowResponse(id=request.update.id, version=version, write_back=PENDING)

    def BulkUpdate(self, request, context):
        with status_codes(context):
            if request.updates and request.updates_json:
                raise ValidationError("set updates or updates_json, not both")
            if request.updates_json:
                updates = updates_from_json(request.entity, request.updates_json)
            else:
                updates = [(u.id, from_struct(u.fields)) for u in request.updates]
            versions = self.write_back.bulk_update(request.entity, updates)
            return cache_pb2.BulkUpdateResponse(accepted=len(versions), max_version=max(versions, default=0))

    def RandomizeAlbumTitles(self, request, context):
        with status_codes(context):
            ids, versions = self.write_back.randomize_album_titles()
            rows = ([cache_pb2.RowVersion(id=i, version=v) for i, v in zip(ids, versions, strict=False)]
                    if request.include_rows else [])
            return cache_pb2.BulkUpdateResponse(accepted=len(versions), rows=rows,
                                                max_version=max(versions, default=0))

    def GetWriteBackStatus(self, request, context):
        with status_codes(context):
            return _status_message(self.write_back.status())

    def Flush(self, request, context):
        with status_codes(context):
            if not math.isfinite(request.wait_seconds) or request.wait_seconds < 0:
                raise ValidationError(f"wait_seconds: must be a number of seconds, 0 or more; "
                                      f"got {request.wait_seconds}")
            # Not beyond the caller's deadline: the thread would wait with nobody to answer.
            wait_s = min(request.wait_seconds, context.time_remaining())
            status = self.write_back.flush(wait_s)
            if wait_s and status.pending:
                abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"{status.pending} rows still pending after {wait_s:g} s")
            return _status_message(status)

    def AckFlushed(self, request, context):
        with status_codes(context):
            ids, versions = flushed_versions(request)
            return cache_pb2.AckFlushedResponse(
                cleaned=self.write_back.ack_flushed(request.entity, ids, versions, request.claim)
            )

    def DeadLetter(self, request, context):
        with status_codes(context):
            failures = [(r.id, r.version, r.error) for r in request.rows]
            return cache_pb2.DeadLetterResponse(
                dead_lettered=self.write_back.dead_letter(request.entity, failures, request.claim))

    def ListDeadLetters(self, request, context):
        with status_codes(context):
            limit = request.limit or MAX_DEAD_LETTERS_LISTED
            if not 0 < limit <= MAX_DEAD_LETTERS_LISTED:
                raise ValidationError(f"limit: must be 1-{MAX_DEAD_LETTERS_LISTED}")
            entries, total = self.write_back.dead_letters(limit)
            return cache_pb2.ListDeadLettersResponse(
                entries=[_dead_letter_message(entry, row) for entry, row in entries], total=total
            )

    def RetryDeadLetter(self, request, context):
        with status_codes(context):
            return _dead_letter_message(self.write_back.resolve_dead_letter(request.entity, request.id, "retry"), None)

    def DiscardDeadLetter(self, request, context):
        with status_codes(context):
            return _dead_letter_message(self.write_back.resolve_dead_letter(request.entity, request.id, "discard"), None)

    def InspectRow(self, request, context):
        with status_codes(context):
            return _inspection_message(self.write_back.inspect(request.entity, request.id))

    def StartDuplication(self, request, context):
        with status_codes(context):
            multiplier = parse_multiplier(request.multiplier)
            return cache_pb2.TaskRef(task_id=self.publisher.duplicate_rows("album", multiplier))

    def GetTask(self, request, context):
        with status_codes(context):
            if not TASK_ID.fullmatch(request.task_id):
                raise ValidationError("task_id: a task id as StartDuplication returns it (a UUID), "
                                      f"got {request.task_id[:40]!r}{'...' if len(request.task_id) > 40 else ''}")
            state, info = self.publisher.task_state(request.task_id)
            status = cache_pb2.TaskStatus(task_id=request.task_id, state=state)
            if state == "PROGRESS" and isinstance(info, dict):
                status.done, status.total = info.get("done", 0), info.get("total", 0)
            elif state == "SUCCESS" and isinstance(info, dict):
                status.done = status.total = info.get("inserted", 0)
                status.result.update(info)
            elif isinstance(info, BaseException):
                status.error = f"{type(info).__name__}: {info}"
            return status


def flushed_versions(request) -> tuple[list[int], list[int]]:
    """The ids and the versions of an AckFlushedRequest, two lists in the same order, given in
    either of its forms."""
    if not request.ids and not request.versions:
        return [r.id for r in request.rows], [r.version for r in request.rows]
    if request.rows:
        raise ValidationError("set rows, or ids and versions, not both")
    if len(request.ids) != len(request.versions):
        raise ValidationError(f"ids and versions: {len(request.ids)} ids but {len(request.versions)} versions")
    return list(request.ids), list(request.versions)
