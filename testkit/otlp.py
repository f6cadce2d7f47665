"""An OTLP trace receiver for tests: the collector's TraceService over gRPC and
POST /v1/traces over HTTP (protobuf), both keeping every span they are sent."""

import gzip
import secrets
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # empty for a root span
    kind: int
    attributes: dict
    links: list = field(default_factory=list)  # (trace_id, span_id) pairs
    events: list = field(default_factory=list)  # event names
    protocol: str = ""  # how it arrived: grpc or http/protobuf


def traceparent(sampled: bool = True) -> tuple[str, str]:
    """A W3C traceparent header of a new trace, sampled or not, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-{'01' if sampled else '00'}", trace_id


def descends_from(span: ReceivedSpan, ancestor_id: str, by_id: dict) -> bool:
    """Whether `span` is below the span `ancestor_id` (by_id: the received spans by id)."""
    while span is not None and span.parent_span_id:
        if span.parent_span_id == ancestor_id:
            return True
        span = by_id.get(span.parent_span_id)
    return False


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest, protocol: str) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    service=resource.get("service.name", ""), name=span.name, trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    events=[event.name for event in span.events], protocol=protocol))
    return spans


class OtlpReceiver:
    """Listens on two free ports; `grpc_endpoint` and `http_endpoint` are what
    OTEL_EXPORTER_OTLP_ENDPOINT takes for each protocol."""

    def __init__(self):
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_port}"

    def __enter__(self):
        self._grpc.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_):
        self._grpc.stop(0)
        self._http.shutdown()
        self._http.server_close()

    def add(self, spans: list[ReceivedSpan]):
        with self._lock:
            self._spans.extend(spans)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, found, timeout_s: float = 30.0):
        """Waits until found(spans) returns something truthy, and returns it; raises
        AssertionError listing what arrived if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = found(self.spans)
            if result:
                return result
            if time.monotonic() > deadline:
                summary = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"the spans never showed it; received {len(self.spans)}: {summary}")
            time.sleep(0.1)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver):
        self.receiver = receiver

    def Export(self, request, context):
        self.receiver.add(spans_of(request, "grpc"))
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(receiver: OtlpReceiver):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404 if self.path != "/v1/traces" else 415)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            receiver.add(spans_of(request, "http/protobuf"))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_):
            pass

    return Handler
