"""Clients of the two gRPC services. Every call carries a deadline; UNAVAILABLE is
retried with exponential backoff by grpc itself, through the service config."""

import json

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chinook import tracing
from chinook.cache.v1 import cache_pb2, cache_pb2_grpc
from chinook.callers import CACHE_SERVICE, PERSISTENCE_SERVICE
from chinook.config import tls_server_name
from chinook.entities import get_entity
from chinook.persistence.v1 import persistence_pb2, persistence_pb2_grpc


def _service_config(service_names: list[str]) -> str:
    return json.dumps({
        # Every address the name resolves to gets calls (several pods behind a headless
        # Kubernetes Service); with one address it is the same as the default.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": name} for name in service_names],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


def make_channel(address: str, service_names: list[str], credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None) -> grpc.Channel:
    """A channel to address, a gRPC target (chinook.config lists the forms): plaintext
    without credentials, else TLS with them (chinook.tls). The server's certificate must
    name the address' host (the common host of a list of addresses), or server_name when
    one is given (a probe dialling 127.0.0.1 names the service)."""
    options = [
        ("grpc.service_config", _service_config(service_names)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if credentials is None:
        return tracing.intercept_channel(grpc.insecure_channel(address, options=options))
    server_name = server_name or tls_server_name(address)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return tracing.intercept_channel(grpc.secure_channel(address, credentials, options=options))


def to_struct(values: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict:
    """The Struct as a dict. Struct carries every number as a double; integral ones
    come back as ints, since every numeric column here is an integer."""
    return {key: _plain(value) for key, value in struct.items()}


def _plain(value):
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, struct_pb2.Struct):
        return from_struct(value)
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(item) for item in value]
    return value


class _Client:
    service_name = ""
    stub_class = None

    def __init__(self, address: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self.channel = make_channel(address, [self.service_name], credentials)
        self.stub = self.stub_class(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def is_serving(self) -> bool:
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=self.service_name), timeout=min(self.timeout_s, 2.0)
        )
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self):
        self.channel.close()


class PersistenceClient(_Client):
    service_name = PERSISTENCE_SERVICE
    stub_class = persistence_pb2_grpc.PersistenceServiceStub
    # Ids per GetRows call, to keep messages small.
    chunk = 5000

    def get_rows(self, entity: str, ids: list[int]) -> list[tuple[int, int, dict]]:
        """The (id, version, fields) of the rows that exist."""
        rows = []
        for start in range(0, len(ids), self.chunk):
            response = self.stub.GetRows(
                persistence_pb2.GetRowsRequest(entity=entity, ids=ids[start:start + self.chunk], as_json=True),
                timeout=self.timeout_s,
            )
            rows.extend(get_entity(entity).rows_from_columns_json(response.rows_json))
        return rows

    def get_versions(self, entity: str, ids: list[int]) -> dict[int, int]:
        """The version Postgres holds of each row that exists."""
        versions = {}
        for start in range(0, len(ids), self.chunk * 4):
            response = self.stub.GetVersions(
                persistence_pb2.GetVersionsRequest(entity=entity, ids=ids[start:start + self.chunk * 4]),
                timeout=self.timeout_s,
            )
            versions.update(zip(response.ids, response.versions, strict=False))
        return versions

    def apply_writes(self, entity: str, rows_json: str) -> persistence_pb2.ApplyWritesResponse:
        """Writes rows given as columnar JSON (chinook.entities.Entity.columns_json), passed on as they are."""
        request = persistence_pb2.ApplyWritesRequest(entity=entity, rows_json=rows_json)
        return self.stub.ApplyWrites(request, timeout=self.timeout_s)

    def list_ids(self, entity: str) -> list[int]:
        ids = []
        for chunk in self.stub.ListIds(persistence_pb2.ListIdsRequest(entity=entity), timeout=self.timeout_s * 6):
            ids.extend(chunk.ids)
        return ids

    def duplicate_rows(self, entity: str, multiplier: int, operation_id: str, timeout_s: float):
        """Yields DuplicateProgress messages until the copy is committed."""
        return self.stub.DuplicateRows(
            persistence_pb2.DuplicateRowsRequest(entity=entity, multiplier=multiplier, operation_id=operation_id),
            timeout=timeout_s,
        )


class CacheClient(_Client):
    service_name = CACHE_SERVICE
    stub_class = cache_pb2_grpc.CacheServiceStub

    def get_rows(self, keys: list[cache_pb2.RowKey]) -> list[cache_pb2.RowResult]:
        return list(self.stub.GetRows(cache_pb2.GetRowsRequest(keys=keys), timeout=self.timeout_s).results)

    def update_rows(self, patches: list[cache_pb2.RowPatch]) -> list[cache_pb2.RowResult]:
        request = cache_pb2.UpdateRowsRequest(patches=patches)
        return list(self.stub.UpdateRows(request, timeout=self.timeout_s).results)

    def watch_changes(self):
        """The change stream (an iterator of ChangeBatch, and a call to cancel). It has
        no deadline: it lasts as long as both ends do, and its heartbeats tell whether
        it still does."""
        return self.stub.WatchChanges(cache_pb2.WatchChangesRequest())

    def update_row(self, entity: str, row_id: int, fields: dict) -> cache_pb2.UpdateRowResponse:
        update = cache_pb2.RowUpdate(id=row_id, fields=to_struct(fields))
        return self.stub.UpdateRow(cache_pb2.UpdateRowRequest(entity=entity, update=update), timeout=self.timeout_s)

    def bulk_update(self, entity: str, rows) -> cache_pb2.BulkUpdateResponse:
        """rows: a list of objects holding the primary key and the columns to change, as
        JSON has them; sent as one JSON text, which cache-svc checks item by item."""
        request = cache_pb2.BulkUpdateRequest(entity=entity, updates_json=json.dumps(rows))
        return self.stub.BulkUpdate(request, timeout=self.timeout_s * 12)

    def randomize_album_titles(self, include_rows: bool) -> cache_pb2.BulkUpdateResponse:
        return self.stub.RandomizeAlbumTitles(
            cache_pb2.RandomizeAlbumTitlesRequest(include_rows=include_rows), timeout=self.timeout_s * 12
        )

    def write_back_status(self) -> cache_pb2.WriteBackStatus:
        return self.stub.GetWriteBackStatus(cache_pb2.GetWriteBackStatusRequest(), timeout=self.timeout_s)

    def flush(self, wait_s: float) -> cache_pb2.WriteBackStatus:
        return self.stub.Flush(cache_pb2.FlushRequest(wait_seconds=wait_s), timeout=self.timeout_s + wait_s)

    def ack_flushed(self, entity: str, ids: list[int], versions: list[int], claim: str) -> cache_pb2.AckFlushedResponse:
        """The rows `ids` are durable at `versions` (in the same order). claim: the claim id
        the flush task carries."""
        request = cache_pb2.AckFlushedRequest(entity=entity, ids=ids, versions=versions, claim=claim)
        return self.stub.AckFlushed(request, timeout=self.timeout_s)

    def dead_letter(self, entity: str, failures: list[tuple[int, int, str]],
                    claim: str) -> cache_pb2.DeadLetterResponse:
        request = cache_pb2.DeadLetterRequest(
            entity=entity, rows=[cache_pb2.FailedWrite(id=i, version=v, error=e) for i, v, e in failures],
            claim=claim,
        )
        return self.stub.DeadLetter(request, timeout=self.timeout_s)

    def list_dead_letters(self, limit: int) -> cache_pb2.ListDeadLettersResponse:
        return self.stub.ListDeadLetters(cache_pb2.ListDeadLettersRequest(limit=limit), timeout=self.timeout_s)

    def retry_dead_letter(self, entity: str, row_id: int) -> cache_pb2.DeadLetterEntry:
        return self.stub.RetryDeadLetter(cache_pb2.DeadLetterKey(entity=entity, id=row_id), timeout=self.timeout_s)

    def discard_dead_letter(self, entity: str, row_id: int) -> cache_pb2.DeadLetterEntry:
        return self.stub.DiscardDeadLetter(cache_pb2.DeadLetterKey(entity=entity, id=row_id), timeout=self.timeout_s)

    def inspect_row(self, entity: str, row_id: int) -> cache_pb2.RowInspection:
        return self.stub.InspectRow(cache_pb2.RowKey(entity=entity, id=row_id), timeout=self.timeout_s)

    def start_duplication(self, multiplier: int) -> str:
        request = cache_pb2.StartDuplicationRequest(multiplier=multiplier)
        return self.stub.StartDuplication(request, timeout=self.timeout_s).task_id

    def get_task(self, task_id: str) -> cache_pb2.TaskStatus:
        return self.stub.GetTask(cache_pb2.GetTaskRequest(task_id=task_id), timeout=self.timeout_s)
