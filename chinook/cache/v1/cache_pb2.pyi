from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteBackState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_BACK_STATE_UNSPECIFIED: _ClassVar[WriteBackState]
    WRITE_BACK_STATE_CLEAN: _ClassVar[WriteBackState]
    WRITE_BACK_STATE_PENDING: _ClassVar[WriteBackState]
    WRITE_BACK_STATE_DEAD_LETTERED: _ClassVar[WriteBackState]

class CachedRowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHED_ROW_STATE_UNSPECIFIED: _ClassVar[CachedRowState]
    CACHED_ROW_STATE_ABSENT: _ClassVar[CachedRowState]
    CACHED_ROW_STATE_CLEAN: _ClassVar[CachedRowState]
    CACHED_ROW_STATE_PENDING: _ClassVar[CachedRowState]
    CACHED_ROW_STATE_IN_FLIGHT: _ClassVar[CachedRowState]
    CACHED_ROW_STATE_DEAD_LETTER: _ClassVar[CachedRowState]
WRITE_BACK_STATE_UNSPECIFIED: WriteBackState
WRITE_BACK_STATE_CLEAN: WriteBackState
WRITE_BACK_STATE_PENDING: WriteBackState
WRITE_BACK_STATE_DEAD_LETTERED: WriteBackState
CACHED_ROW_STATE_UNSPECIFIED: CachedRowState
CACHED_ROW_STATE_ABSENT: CachedRowState
CACHED_ROW_STATE_CLEAN: CachedRowState
CACHED_ROW_STATE_PENDING: CachedRowState
CACHED_ROW_STATE_IN_FLIGHT: CachedRowState
CACHED_ROW_STATE_DEAD_LETTER: CachedRowState

class Row(_message.Message):
    __slots__ = ("entity", "id", "fields", "version")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    fields: _struct_pb2.Struct
    version: int
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetRowRequest(_message.Message):
    __slots__ = ("entity", "id", "include_fields")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    include_fields: bool
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ..., include_fields: _Optional[bool] = ...) -> None: ...

class GetRowResponse(_message.Message):
    __slots__ = ("row", "cache_hit", "write_back", "row_json")
    ROW_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    WRITE_BACK_FIELD_NUMBER: _ClassVar[int]
    ROW_JSON_FIELD_NUMBER: _ClassVar[int]
    row: Row
    cache_hit: bool
    write_back: WriteBackState
    row_json: str
    def __init__(self, row: _Optional[_Union[Row, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., write_back: _Optional[_Union[WriteBackState, str]] = ..., row_json: _Optional[str] = ...) -> None: ...

class RowUpdate(_message.Message):
    __slots__ = ("id", "fields")
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: int
    fields: _struct_pb2.Struct
    def __init__(self, id: _Optional[int] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateRowRequest(_message.Message):
    __slots__ = ("entity", "update")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    entity: str
    update: RowUpdate
    def __init__(self, entity: _Optional[str] = ..., update: _Optional[_Union[RowUpdate, _Mapping]] = ...) -> None: ...

class UpdateRowResponse(_message.Message):
    __slots__ = ("id", "version", "write_back")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITE_BACK_FIELD_NUMBER: _ClassVar[int]
    id: int
    version: int
    write_back: WriteBackState
    def __init__(self, id: _Optional[int] = ..., version: _Optional[int] = ..., write_back: _Optional[_Union[WriteBackState, str]] = ...) -> None: ...

class RowKey(_message.Message):
    __slots__ = ("entity", "id")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class GetRowsRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RowKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[RowKey, _Mapping]]] = ...) -> None: ...

class RowResult(_message.Message):
    __slots__ = ("id", "code", "message", "version", "cache_hit", "write_back", "row_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    WRITE_BACK_FIELD_NUMBER: _ClassVar[int]
    ROW_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    message: str
    version: int
    cache_hit: bool
    write_back: WriteBackState
    row_json: str
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., version: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., write_back: _Optional[_Union[WriteBackState, str]] = ..., row_json: _Optional[str] = ...) -> None: ...

class GetRowsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RowResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RowResult, _Mapping]]] = ...) -> None: ...

class RowPatch(_message.Message):
    __slots__ = ("entity", "id", "fields_json", "trace_context", "trace_unsampled")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TRACE_UNSAMPLED_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    fields_json: str
    trace_context: _containers.ScalarMap[str, str]
    trace_unsampled: bool
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ..., fields_json: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., trace_unsampled: _Optional[bool] = ...) -> None: ...

class UpdateRowsRequest(_message.Message):
    __slots__ = ("patches",)
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    patches: _containers.RepeatedCompositeFieldContainer[RowPatch]
    def __init__(self, patches: _Optional[_Iterable[_Union[RowPatch, _Mapping]]] = ...) -> None: ...

class UpdateRowsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RowResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RowResult, _Mapping]]] = ...) -> None: ...

class BulkUpdateRequest(_message.Message):
    __slots__ = ("entity", "updates", "updates_json")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    UPDATES_JSON_FIELD_NUMBER: _ClassVar[int]
    entity: str
    updates: _containers.RepeatedCompositeFieldContainer[RowUpdate]
    updates_json: str
    def __init__(self, entity: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[RowUpdate, _Mapping]]] = ..., updates_json: _Optional[str] = ...) -> None: ...

class RowVersion(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    version: int
    def __init__(self, id: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class BulkUpdateResponse(_message.Message):
    __slots__ = ("accepted", "rows", "max_version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rows: _containers.RepeatedCompositeFieldContainer[RowVersion]
    max_version: int
    def __init__(self, accepted: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[RowVersion, _Mapping]]] = ..., max_version: _Optional[int] = ...) -> None: ...

class RandomizeAlbumTitlesRequest(_message.Message):
    __slots__ = ("include_rows",)
    INCLUDE_ROWS_FIELD_NUMBER: _ClassVar[int]
    include_rows: bool
    def __init__(self, include_rows: _Optional[bool] = ...) -> None: ...

class GetWriteBackStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WriteBackStatus(_message.Message):
    __slots__ = ("pending", "oldest_pending_age_s", "accepted_total", "flushed_total", "failed")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_S_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    pending: int
    oldest_pending_age_s: float
    accepted_total: int
    flushed_total: int
    failed: int
    def __init__(self, pending: _Optional[int] = ..., oldest_pending_age_s: _Optional[float] = ..., accepted_total: _Optional[int] = ..., flushed_total: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("wait_seconds",)
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    def __init__(self, wait_seconds: _Optional[float] = ...) -> None: ...

class AckFlushedRequest(_message.Message):
    __slots__ = ("entity", "rows", "ids", "versions", "claim")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    entity: str
    rows: _containers.RepeatedCompositeFieldContainer[RowVersion]
    ids: _containers.RepeatedScalarFieldContainer[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    claim: str
    def __init__(self, entity: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[RowVersion, _Mapping]]] = ..., ids: _Optional[_Iterable[int]] = ..., versions: _Optional[_Iterable[int]] = ..., claim: _Optional[str] = ...) -> None: ...

class AckFlushedResponse(_message.Message):
    __slots__ = ("cleaned",)
    CLEANED_FIELD_NUMBER: _ClassVar[int]
    cleaned: int
    def __init__(self, cleaned: _Optional[int] = ...) -> None: ...

class FailedWrite(_message.Message):
    __slots__ = ("id", "version", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    version: int
    error: str
    def __init__(self, id: _Optional[int] = ..., version: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class DeadLetterRequest(_message.Message):
    __slots__ = ("entity", "rows", "claim")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    entity: str
    rows: _containers.RepeatedCompositeFieldContainer[FailedWrite]
    claim: str
    def __init__(self, entity: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[FailedWrite, _Mapping]]] = ..., claim: _Optional[str] = ...) -> None: ...

class DeadLetterResponse(_message.Message):
    __slots__ = ("dead_lettered",)
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    dead_lettered: int
    def __init__(self, dead_lettered: _Optional[int] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class DeadLetterKey(_message.Message):
    __slots__ = ("entity", "id")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class DeadLetterEntry(_message.Message):
    __slots__ = ("entity", "id", "version", "error", "failed_at", "fields")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    version: int
    error: str
    failed_at: float
    fields: _struct_pb2.Struct
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ..., version: _Optional[int] = ..., error: _Optional[str] = ..., failed_at: _Optional[float] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("entries", "total")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DeadLetterEntry]
    total: int
    def __init__(self, entries: _Optional[_Iterable[_Union[DeadLetterEntry, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class CachedSide(_message.Message):
    __slots__ = ("state", "row_json", "version", "since", "partial")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROW_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    state: CachedRowState
    row_json: str
    version: int
    since: float
    partial: bool
    def __init__(self, state: _Optional[_Union[CachedRowState, str]] = ..., row_json: _Optional[str] = ..., version: _Optional[int] = ..., since: _Optional[float] = ..., partial: _Optional[bool] = ...) -> None: ...

class PostgresSide(_message.Message):
    __slots__ = ("present", "row_json", "wb_version")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    ROW_JSON_FIELD_NUMBER: _ClassVar[int]
    WB_VERSION_FIELD_NUMBER: _ClassVar[int]
    present: bool
    row_json: str
    wb_version: int
    def __init__(self, present: _Optional[bool] = ..., row_json: _Optional[str] = ..., wb_version: _Optional[int] = ...) -> None: ...

class RowInspection(_message.Message):
    __slots__ = ("entity", "id", "cache", "postgres", "agree")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    POSTGRES_FIELD_NUMBER: _ClassVar[int]
    AGREE_FIELD_NUMBER: _ClassVar[int]
    entity: str
    id: int
    cache: CachedSide
    postgres: PostgresSide
    agree: bool
    def __init__(self, entity: _Optional[str] = ..., id: _Optional[int] = ..., cache: _Optional[_Union[CachedSide, _Mapping]] = ..., postgres: _Optional[_Union[PostgresSide, _Mapping]] = ..., agree: _Optional[bool] = ...) -> None: ...

class StartDuplicationRequest(_message.Message):
    __slots__ = ("multiplier",)
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    multiplier: int
    def __init__(self, multiplier: _Optional[int] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "state", "done", "total", "result", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: str
    done: int
    total: int
    result: _struct_pb2.Struct
    error: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangeBatch(_message.Message):
    __slots__ = ("subscribed", "changes_json", "heartbeat_at_ms")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    CHANGES_JSON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    subscribed: bool
    changes_json: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_at_ms: int
    def __init__(self, subscribed: _Optional[bool] = ..., changes_json: _Optional[_Iterable[str]] = ..., heartbeat_at_ms: _Optional[int] = ...) -> None: ...
