from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Row(_message.Message):
    __slots__ = ("id", "fields", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    fields: _struct_pb2.Struct
    version: int
    def __init__(self, id: _Optional[int] = ..., fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetRowsRequest(_message.Message):
    __slots__ = ("entity", "ids", "as_json")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    AS_JSON_FIELD_NUMBER: _ClassVar[int]
    entity: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    as_json: bool
    def __init__(self, entity: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., as_json: _Optional[bool] = ...) -> None: ...

class GetRowsResponse(_message.Message):
    __slots__ = ("rows", "rows_json")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    rows_json: str
    def __init__(self, rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., rows_json: _Optional[str] = ...) -> None: ...

class GetVersionsRequest(_message.Message):
    __slots__ = ("entity", "ids")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    entity: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, entity: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetVersionsResponse(_message.Message):
    __slots__ = ("ids", "versions")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class ApplyWritesRequest(_message.Message):
    __slots__ = ("entity", "rows", "rows_json")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    entity: str
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    rows_json: str
    def __init__(self, entity: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., rows_json: _Optional[str] = ...) -> None: ...

class ApplyWritesResponse(_message.Message):
    __slots__ = ("applied_ids", "stale_ids", "missing_ids", "failed")
    APPLIED_IDS_FIELD_NUMBER: _ClassVar[int]
    STALE_IDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    applied_ids: _containers.RepeatedScalarFieldContainer[int]
    stale_ids: _containers.RepeatedScalarFieldContainer[int]
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    failed: _containers.RepeatedCompositeFieldContainer[FailedRow]
    def __init__(self, applied_ids: _Optional[_Iterable[int]] = ..., stale_ids: _Optional[_Iterable[int]] = ..., missing_ids: _Optional[_Iterable[int]] = ..., failed: _Optional[_Iterable[_Union[FailedRow, _Mapping]]] = ...) -> None: ...

class FailedRow(_message.Message):
    __slots__ = ("id", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    error: str
    def __init__(self, id: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListIdsRequest(_message.Message):
    __slots__ = ("entity",)
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    entity: str
    def __init__(self, entity: _Optional[str] = ...) -> None: ...

class IdChunk(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DuplicateRowsRequest(_message.Message):
    __slots__ = ("entity", "multiplier", "operation_id")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    entity: str
    multiplier: int
    operation_id: str
    def __init__(self, entity: _Optional[str] = ..., multiplier: _Optional[int] = ..., operation_id: _Optional[str] = ...) -> None: ...

class DuplicateProgress(_message.Message):
    __slots__ = ("done", "total")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...
