"""The OTLP span exporters tracing uses: the OpenTelemetry exporters (endpoint, headers,
certificates, timeout, compression and retries read from the OTEL_EXPORTER_OTLP_* variables
as before), with the spans encoded here.

The exporters' own encoder builds every attribute, event and link of a span as a message of
its own, from keyword arguments, and copies each into its parent: 32 µs a span of the
gateway's six attributes, a third of what a sampled request's span cost the gateway in all
(bench/README.md, "This round"). Here the same messages are filled in place through
protobuf's mutation API (`add()`, field assignment) at under a third of that;
tests/unit/test_span_export.py checks that both encoders make the same request for every
kind of span, attribute value, event and link.
"""

import logging
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

# OTLP's span kinds are the SDK's plus one: OTLP keeps 0 for "unspecified".
_KINDS = {kind: kind.value + 1 for kind in SpanKind}
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def encode_spans(spans: Sequence) -> ExportTraceServiceRequest:
    """The OTLP export request of `spans` (SDK ReadableSpans), grouped by resource and then
    by instrumentation scope in the order they first appear, as the exporters' encoder
    groups them."""
    request = ExportTraceServiceRequest()
    scopes_by_resource: dict = {}
    for span in spans:
        resource = span.resource
        scopes = scopes_by_resource.get(resource)
        if scopes is None:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.SetInParent()
            _fill_attributes(resource_spans.resource.attributes, resource.attributes)
            if resource.schema_url:
                resource_spans.schema_url = resource.schema_url
            scopes = scopes_by_resource[resource] = ({}, resource_spans)
        scope = span.instrumentation_scope or None
        scope_spans = scopes[0].get(scope)
        if scope_spans is None:
            scope_spans = scopes[0][scope] = scopes[1].scope_spans.add()
            scope_spans.scope.SetInParent()
            if scope is not None:
                scope_spans.scope.name = scope.name
                if scope.version:
                    scope_spans.scope.version = scope.version
                _fill_attributes(scope_spans.scope.attributes, scope.attributes)
                if scope.schema_url:
                    scope_spans.schema_url = scope.schema_url
        _fill_span(scope_spans.spans.add(), span)
    return request


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
    """OTLP/HTTP, encoding with encode_spans; otherwise the library's export, step for step
    (its metrics, its request size limit, its client and retries)."""

    def export(self, spans) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)
        serialized = encode_spans(spans).SerializePartialToString()
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
