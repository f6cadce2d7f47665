"""The OTLP span exporters tracing uses: the OpenTelemetry exporters (endpoint, headers,
certificates, timeout, compression and retries read from the OTEL_EXPORTER_OTLP_* variables
as before), with the spans encoded here.

The exporters' own encoder builds every attribute, event and link of a span as a message of
its own, from keyword arguments, and copies each into its parent: 32 µs a span of the
gateway's six attributes, a third of what a sampled request's span cost the gateway in all
(bench/README.md, "This round"). Here a span of plain attributes (strings, numbers,
booleans, bytes), no events and no links, as nearly every span is, is written straight in
protobuf's wire format, and any other is filled in place through protobuf's mutation API
(`add()`, field assignment): 4 µs and 10 µs a gateway span, measured alone. The resources and scopes, a few
per process, are encoded once each. tests/unit/test_span_export.py checks that the bytes
are those of the exporters' encoder for every kind of span, attribute value, event and link.
"""

import logging
import struct
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger(__name__)

_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK

# Wire format: each field's key (its number and wire type), as the one or two bytes written.
# ExportTraceServiceRequest.resource_spans; ResourceSpans: resource, scope_spans,
# schema_url; ScopeSpans: scope, spans, schema_url.
_RESOURCE_SPANS = b"\x0a"
_RESOURCE, _SCOPE_SPANS, _SCHEMA_URL = b"\x0a", b"\x12", b"\x1a"
_SCOPE, _SPANS = b"\x0a", b"\x12"
# Span.
_TRACE_ID, _SPAN_ID, _TRACE_STATE, _PARENT_SPAN_ID = b"\x0a\x10", b"\x12\x08", b"\x1a", b"\x22\x08"
_NAME, _KIND, _START, _END = b"\x2a", b"\x30", b"\x39", b"\x41"
_ATTRIBUTE, _DROPPED_ATTRIBUTES, _DROPPED_EVENTS, _DROPPED_LINKS = b"\x4a", b"\x50", b"\x60", b"\x70"
_STATUS, _FLAGS = b"\x7a", b"\x85\x01"
# OTLP's span kinds are the SDK's plus one (OTLP keeps 0 for "unspecified"), and each one's field.
_KINDS = {kind: kind.value + 1 for kind in SpanKind}
_KIND_FIELDS = {kind: _KIND + bytes((number,)) for kind, number in _KINDS.items()}
# Status: message, code. KeyValue: key, value. AnyValue: string, bool, int, double, bytes.
_STATUS_MESSAGE, _STATUS_CODE = b"\x12", b"\x18"
_KEY, _VALUE = b"\x0a", b"\x12"
_STRING, _BOOL, _INT, _DOUBLE, _BYTES = b"\x0a", b"\x10", b"\x18", b"\x21", b"\x3a"
_FALSE, _TRUE = b"\x10\x00", b"\x10\x01"
# A status with no description, by its code.
_STATUS_FIELDS = {StatusCode.UNSET: b"\x7a\x00", StatusCode.OK: b"\x7a\x02\x18\x01",
                  StatusCode.ERROR: b"\x7a\x02\x18\x02"}
_NO_VALUE = b""
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE_BYTES = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63
_UINT64 = (1 << 64) - 1


def serialize_spans(spans: Sequence) -> bytes:
    """The serialized OTLP export request of `spans` (SDK ReadableSpans or LightSpans),
    grouped by resource and then by instrumentation scope in the order they first appear,
    as the exporters' encoder groups them."""
    scopes_by_resource: dict = {}
    for span in spans:
        scopes = scopes_by_resource.get(span.resource)
        if scopes is None:
            scopes = scopes_by_resource[span.resource] = {}
        scope = span.instrumentation_scope or None
        encoded = scopes.get(scope)
        if encoded is None:
            encoded = scopes[scope] = []
        encoded.append(_field(_SPANS, _span_bytes(span)))
    out = []
    for resource, scopes in scopes_by_resource.items():
        resource_spans = [_field(_RESOURCE, _resource_bytes(resource))]
        for scope, encoded in scopes.items():
            scope_spans = [_field(_SCOPE, _scope_bytes(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_spans.append(_field(_SCHEMA_URL, scope.schema_url.encode()))
            resource_spans.append(_field(_SCOPE_SPANS, b"".join(scope_spans)))
        if resource.schema_url:
            resource_spans.append(_field(_SCHEMA_URL, resource.schema_url.encode()))
        out.append(_field(_RESOURCE_SPANS, b"".join(resource_spans)))
    return b"".join(out)


def encode_spans(spans: Sequence) -> ExportTraceServiceRequest:
    """The OTLP export request of `spans`, as a message (the gRPC exporter sends one)."""
    return ExportTraceServiceRequest.FromString(serialize_spans(spans))


# The varints of 0-127, one byte each: most lengths and counts.
_SMALL = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a message."""
    size = len(payload)
    return key + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


_resources: dict = {}
_scopes: dict = {}
# Encoded attributes (whole KeyValue fields) with string or integer values, by key and
# value, for the first keys seen and each one's first values: a process' spans use a few
# dozen keys, most with a few values (a method, a route, a status code), which are then not
# encoded again. Booleans and floats are left out: True, 1 and 1.0 are one key of a dict.
_cached_attributes: dict = {}
_MAX_KEYS = 1024
_MAX_VALUES_PER_KEY = 64
# A key's field, for the values not kept above.
_key_fields: dict = {}


def _resource_bytes(resource) -> bytes:
    """A resource's message, encoded once: a process has one or two."""
    encoded = _resources.get(resource)
    if encoded is None:
        message = Resource()
        _fill_attributes(message.attributes, resource.attributes)
        encoded = _resources[resource] = message.SerializeToString()
    return encoded


def _scope_bytes(scope) -> bytes:
    """An instrumentation scope's message (empty for none), encoded once."""
    encoded = _scopes.get(scope)
    if encoded is None:
        message = InstrumentationScope()
        if scope is not None:
            message.name = scope.name
            if scope.version:
                message.version = scope.version
            _fill_attributes(message.attributes, scope.attributes)
        encoded = _scopes[scope] = message.SerializeToString()
    return encoded


def _attribute(key: str, value: bytes) -> bytes:
    """A span's attribute field: a KeyValue of the key and an encoded AnyValue."""
    key_field = _key_fields.get(key)
    if key_field is None:
        key_field = _field(_KEY, key.encode())
        if len(_key_fields) < _MAX_KEYS:
            _key_fields[key] = key_field
    return _field(_ATTRIBUTE, key_field + _field(_VALUE, value))


def _cached_attribute(key: str, value) -> bytes | None:
    """A string or integer attribute's field, from _cached_attributes or encoded (and kept
    there, within its bounds); None for an integer protobuf cannot hold."""
    by_value = _cached_attributes.get(key)
    if by_value is None and len(_cached_attributes) < _MAX_KEYS:
        by_value = _cached_attributes[key] = {}
    encoded = by_value.get(value) if by_value is not None else None
    if encoded is None:
        any_value = _field(_STRING, value.encode()) if type(value) is str else _plain_value(value)
        if any_value is None:
            return None
        encoded = _attribute(key, any_value)
        if by_value is not None and len(by_value) < _MAX_VALUES_PER_KEY:
            by_value[value] = encoded
    return encoded


def _span_bytes(span) -> bytes:
    """A span's message: written here when it has plain attributes only and no events or
    links, through protobuf's messages otherwise."""
    if span.events or span.links:
        return _span_message(span)
    # A SpanContext is a tuple: unpacked at once rather than through a property each.
    trace_id, span_id, _, _, trace_state, _ = span.context
    out = [_TRACE_ID, trace_id.to_bytes(16, "big"), _SPAN_ID, span_id.to_bytes(8, "big")]
    if trace_state:
        out.append(_field(_TRACE_STATE, ",".join(f"{key}={value}" for key, value in trace_state.items()).encode()))
    parent = span.parent
    flags = _HAS_IS_REMOTE
    if parent is not None:
        out += (_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
        if parent.is_remote:
            flags |= _IS_REMOTE
    if span.name:
        out.append(_field(_NAME, span.name.encode()))
    out.append(_KIND_FIELDS[span.kind])
    if span.start_time:
        out += (_START, _FIXED64(span.start_time))
    if span.end_time:
        out += (_END, _FIXED64(span.end_time))
    for key, value in span.attributes.items():
        kind = type(value)
        if kind is str or kind is int:
            encoded = _cached_attribute(key, value)
        else:
            any_value = _plain_value(value)
            encoded = None if any_value is None else _attribute(key, any_value)
        if encoded is None:
            return _span_message(span)
        out.append(encoded)
    if span.dropped_attributes:
        out += (_DROPPED_ATTRIBUTES, _varint(span.dropped_attributes))
    if span.dropped_events:
        out += (_DROPPED_EVENTS, _varint(span.dropped_events))
    if span.dropped_links:
        out += (_DROPPED_LINKS, _varint(span.dropped_links))
    status = span.status
    code = status.status_code
    if status.description:
        value = code.value
        out.append(_field(_STATUS, _field(_STATUS_MESSAGE, status.description.encode())
                          + (_STATUS_CODE + _SMALL[value] if value else b"")))
    else:
        out.append(_STATUS_FIELDS[code])
    out += (_FLAGS, _FIXED32(flags))
    return b"".join(out)


def _plain_value(value) -> bytes | None:
    """An AnyValue message of a plain value other than a string, or None for any other
    (left to protobuf)."""
    kind = type(value)
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        if _INT64_MIN <= value < _INT64_END:
            return _INT + _varint(value & _UINT64)
        return None
    if kind is float:
        return _DOUBLE + _DOUBLE_BYTES(value)
    if kind is bytes:
        return _field(_BYTES, value)
    if value is None:
        return _NO_VALUE
    return None


def _span_message(span) -> bytes:
    message = Span()
    _fill_span(message, span)
    return message.SerializeToString()


def _fill_span(out, span):
    context = span.context
    out.trace_id = context.trace_id.to_bytes(16, "big")
    out.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state:
        out.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    parent = span.parent
    flags = _HAS_IS_REMOTE
    if parent is not None:
        out.parent_span_id = parent.span_id.to_bytes(8, "big")
        if parent.is_remote:
            flags |= _IS_REMOTE
    out.flags = flags
    out.name = span.name
    out.kind = _KINDS[span.kind]
    out.start_time_unix_nano = span.start_time
    out.end_time_unix_nano = span.end_time
    _fill_attributes(out.attributes, span.attributes)
    for event in span.events:
        pb_event = out.events.add(name=event.name, time_unix_nano=event.timestamp,
                                  dropped_attributes_count=event.dropped_attributes)
        _fill_attributes(pb_event.attributes, event.attributes)
    for link in span.links:
        link_flags = _HAS_IS_REMOTE | (_IS_REMOTE if link.context.is_remote else 0)
        pb_link = out.links.add(trace_id=link.context.trace_id.to_bytes(16, "big"),
                                span_id=link.context.span_id.to_bytes(8, "big"),
                                dropped_attributes_count=link.dropped_attributes, flags=link_flags)
        _fill_attributes(pb_link.attributes, link.attributes)
    status = span.status
    out.status.code = status.status_code.value
    if status.description:
        out.status.message = status.description
    out.dropped_attributes_count = span.dropped_attributes
    out.dropped_events_count = span.dropped_events
    out.dropped_links_count = span.dropped_links


def _fill_attributes(out, attributes):
    if attributes:
        add = out.add
        for key, value in attributes.items():
            try:
                _fill_value(add(key=key).value, value)
            except TypeError:
                # As the exporters' encoder does: the attribute is left out, the span kept.
                del out[-1]
                log.exception("attribute %s left out of the export", key)


def _fill_value(out, value):
    if value is None:
        out.SetInParent()
    elif isinstance(value, str):
        out.string_value = value
    # Before int: a bool is one too.
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Sequence):
        array = out.array_value
        array.SetInParent()
        for item in value:
            _fill_value(array.values.add(), item)
    elif isinstance(value, Mapping):
        pairs = out.kvlist_value
        pairs.SetInParent()
        for key, item in value.items():
            _fill_value(pairs.values.add(key=str(key)).value, item)
    else:
        raise TypeError(f"an attribute of type {type(value).__name__} cannot be exported: {value!r}")


class OtlpHttpSpanExporter(HttpSpanExporter):
    """OTLP/HTTP, encoding with serialize_spans; otherwise the library's export, step for step
    (its metrics, its request size limit, its client and retries)."""

    def export(self, spans) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)
        serialized = serialize_spans(spans)
        if http_exporter._is_request_too_large(serialized, self._max_request_size):
            # The library's own refusal: logged and counted as it would be.
            return super().export(spans)
        with self._metrics.export_operation(len(spans)) as result:
            outcome = self._client.export(serialized)
            if not outcome.success:
                result.error = outcome.error
                if outcome.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: outcome.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class OtlpGrpcSpanExporter(GrpcSpanExporter):
    """OTLP/gRPC, encoding with encode_spans; the library's export otherwise."""

    def _translate_data(self, data) -> ExportTraceServiceRequest:
        return encode_spans(data)
