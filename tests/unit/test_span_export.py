"""chinook.span_export: its encoder makes the request the OpenTelemetry exporters' own
encoder makes, byte for byte, for every kind of span (those it writes itself and those it
leaves to protobuf's messages), and its exporters send it."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from chinook import span_export
from chinook.light_spans import LightSpansProvider
from chinook.span_export import OtlpGrpcSpanExporter, OtlpHttpSpanExporter, encode_spans, serialize_spans

REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "value"), ("other", "1")]))
LOCAL = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))


def provider(resource: Resource, limits: SpanLimits | None = None):
    spans = InMemorySpanExporter()
    made = TracerProvider(resource=resource, span_limits=limits)
    made.add_span_processor(SimpleSpanProcessor(spans))
    return made, spans


def varied_spans() -> list[ReadableSpan]:
    """Spans of two resources and three scopes, with every kind of attribute value, events,
    links, statuses, a remote parent with a trace state, and limits that drop some."""
    first, first_spans = provider(Resource({"service.name": "gateway", "service.version": 3}, "https://schema/1"))
    second, second_spans = provider(Resource({"service.name": "cache-svc"}),
                                    SpanLimits(max_attributes=2, max_events=1, max_links=1))
    plain = first.get_tracer("plain")
    versioned = first.get_tracer("versioned", "1.2", "https://schema/scope", {"scope.attribute": True})
    with plain.start_as_current_span("GET /albums/<id>", kind=SpanKind.SERVER,
                                     attributes={"http.method": "GET", "http.status_code": 200}) as root:
        root.set_attributes({"a.bool": False, "a.float": 0.25, "a.negative": -7, "a.strings": ["x", "y"],
                             "a.ints": [1, 2, 3], "a.floats": [0.5], "a.bools": [True, False], "a.empty": ""})
        root.add_event("cached", {"tier": "near", "rows": 1})
        root.add_event("bare")
        with versioned.start_as_current_span("UpdateRows", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "cache-svc is down"))
    for kind in SpanKind:
        plain.start_span(f"kind {kind.name}", kind=kind).end()
    remote_parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    tracer = second.get_tracer("cache_svc")
    span = tracer.start_span("write-back accept album", remote_parent, SpanKind.INTERNAL,
                             attributes={"one": 1, "two": 2, "three": 3},
                             links=[Link(REMOTE, {"link.attribute": "x"}), Link(LOCAL)])
    span.add_event("first")
    span.add_event("second")
    span.set_status(Status(StatusCode.OK))
    span.end()
    tracer.start_span("flush", links=[Link(LOCAL)]).end()
    return [*first_spans.get_finished_spans(), *second_spans.get_finished_spans()]


def plain_spans(provider_class) -> list:
    """Spans the encoder writes itself: every plain kind of value, at the edges of its
    encoding (empty, negative, the largest int64, long and non-ASCII strings), parents
    remote, local and none, a trace state, every status, a span with no name, and
    attributes past the limit."""
    exporter = InMemorySpanExporter()
    made = provider_class(resource=Resource({"service.name": "gateway", "pid": 7}, "https://schema/1"),
                          span_limits=SpanLimits(max_span_attributes=12))
    made.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = made.get_tracer("plain", "0.1")
    remote_parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span("GET /albums/<id>", remote_parent, SpanKind.SERVER) as root:
        root.set_attributes({"s": "x", "s.empty": "", "s.long": "é" * 300, "b.true": True, "b.false": False,
                             "i.zero": 0, "i.negative": -(1 << 63), "i.large": (1 << 63) - 1, "i.small": 127,
                             "f": -0.5, "bytes": b"\x00\xff", "none": None})
        root.set_attribute("beyond", 1)
        root.set_status(Status(StatusCode.ERROR, "a description"))
        with tracer.start_as_current_span("", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.OK))
    tracer.start_span("root", context=trace.set_span_in_context(trace.INVALID_SPAN)).end()
    return exporter.get_finished_spans()


@pytest.mark.parametrize("provider_class", [TracerProvider, LightSpansProvider], ids=["sdk spans", "light spans"])
def test_the_bytes_are_the_libraries_for_spans_written_here_and_spans_left_to_protobuf(provider_class):
    for spans in (plain_spans(provider_class), varied_spans()):
        assert serialize_spans(spans) == library_encode_spans(spans).SerializeToString(deterministic=True)
    # What was compared holds what was meant to be.
    root = ExportTraceServiceRequest.FromString(serialize_spans(plain_spans(provider_class))).resource_spans[0] \
        .scope_spans[0].spans[-2]
    assert root.dropped_attributes_count == 1 and root.status.message == "a description"
    assert len(root.attributes) == 12 and root.parent_span_id and root.trace_state == "vendor=value,other=1"


def test_string_and_integer_attributes_are_kept_encoded_within_bounds_and_encode_alike_past_them():
    exporter = InMemorySpanExporter()
    made = LightSpansProvider(resource=Resource({}))
    made.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = made.get_tracer("bounds")
    for index in range(3 * span_export._MAX_VALUES_PER_KEY):
        tracer.start_span("GET", attributes={"http.target": f"/albums/{index}", "http.method": "GET",
                                             "http.status_code": 200 + index}).end()
    # A key kept with an integer value, then given values equal to it as keys of a dict
    # (True == 1 == 1.0): each encoded as itself.
    for value in (1, True, 1.0, 1):
        tracer.start_span("typed", attributes={"a.value": value}).end()
    spans = exporter.get_finished_spans()
    assert serialize_spans(spans) == library_encode_spans(spans).SerializeToString(deterministic=True)
    for key in ("http.target", "http.status_code"):
        assert len(span_export._cached_attributes[key]) == span_export._MAX_VALUES_PER_KEY
    assert len(span_export._cached_attributes) <= span_export._MAX_KEYS


def test_the_bytes_comparison_can_fail():
    spans = plain_spans(LightSpansProvider)
    written = serialize_spans(spans)
    spans[0].attributes["i.zero"] = 1
    assert serialize_spans(spans) != written


def test_the_request_is_the_libraries_for_every_kind_of_span():
    spans = varied_spans()
    ours, theirs = encode_spans(spans), library_encode_spans(spans)
    assert ours == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    # What was compared holds what was meant to be.
    assert [len(resource.scope_spans) for resource in ours.resource_spans] == [2, 1]
    dropped = ours.resource_spans[1].scope_spans[0].spans[0]
    assert (dropped.dropped_attributes_count, dropped.dropped_events_count, dropped.dropped_links_count) == (1, 1, 1)
    assert dropped.trace_state == "vendor=value,other=1"


def test_the_comparison_can_fail():
    spans = varied_spans()
    ours = encode_spans(spans)
    request_span = next(span for scope in ours.resource_spans[0].scope_spans for span in scope.spans
                        if span.name == "GET /albums/<id>")
    request_span.attributes[0].value.string_value = "POST"
    assert ours != library_encode_spans(spans)


def test_a_value_that_cannot_be_exported_is_left_out_as_the_library_leaves_it_out():
    span = ReadableSpan("odd", context=LOCAL, attributes={"kept": "x", "odd": object(), "after": 1},
                        resource=Resource({}), start_time=1, end_time=2)
    ours = encode_spans([span])
    assert ours == library_encode_spans([span])
    assert [pair.key for pair in ours.resource_spans[0].scope_spans[0].spans[0].attributes] == ["kept", "after"]


def test_no_spans_no_resource():
    assert encode_spans([]) == ExportTraceServiceRequest()


@pytest.fixture
def receiver():
    """An OTLP/HTTP endpoint on a free port keeping the bodies it is sent."""
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces":
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces", bodies
    server.shutdown()
    server.server_close()


def test_the_http_exporter_sends_the_request(receiver):
    endpoint, bodies = receiver
    spans = varied_spans()
    exporter = OtlpHttpSpanExporter(endpoint=endpoint)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert [ExportTraceServiceRequest.FromString(body) for body in bodies] == [library_encode_spans(spans)]
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(bodies) == 1


def test_the_http_exporter_reports_a_refused_export(receiver):
    endpoint, bodies = receiver
    exporter = OtlpHttpSpanExporter(endpoint=endpoint.replace("/v1/traces", "/v1/elsewhere"), timeout=2)
    assert exporter.export(varied_spans()) is SpanExportResult.FAILURE
    assert bodies == []


def test_the_grpc_exporter_encodes_with_encode_spans():
    spans = varied_spans()
    assert OtlpGrpcSpanExporter(endpoint="127.0.0.1:1", insecure=True)._translate_data(spans) == library_encode_spans(spans)
