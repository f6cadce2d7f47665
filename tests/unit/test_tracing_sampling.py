"""Tracing costs what it samples (docs/tracing.md, "What is sampled"): a request, call or
update of a trace not sampled begins no span, recording or not (the sampler, which the SDK
asks for every span it is to begin, counts them; a span processor's on_start counts the
recording ones), and only carries its context on; a sampled one gets the spans it always had."""

import logging
import random
from concurrent import futures

import grpc
import pytest
from flask import Flask, abort
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.grpc import server_interceptor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio, Sampler

from chinook import logs, tracing
from chinook.cache.v1 import cache_pb2
from chinook.grpc_server import SampledCalls
from gateway import direct_rows, request_spans

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
UNSAMPLED = f"00-{TRACE_ID}-b7ad6b7169203331-00"
SAMPLED = f"00-{TRACE_ID}-b7ad6b7169203331-01"
METHOD = "/chinook.cache.v1.CacheService/UpdateRows"


class Started(SpanProcessor):
    """The names of the recording spans begun."""

    def __init__(self):
        self.names = []

    def on_start(self, span, parent_context=None):
        self.names.append(span.name)


class Asked(Sampler):
    """The configured sampler, noting the name of every span the SDK was asked to begin."""

    def __init__(self, configured: Sampler):
        self.configured = configured
        self.names = []
        # Each decision: the trace id it was made on, and whether it sampled.
        self.decisions = []

    def should_sample(self, parent_context, trace_id, name, *rest, **named):
        self.names.append(name)
        result = self.configured.should_sample(parent_context, trace_id, name, *rest, **named)
        self.decisions.append((trace_id, result.decision.is_sampled()))
        return result

    def get_description(self):
        return "Asked"


@pytest.fixture
def spans(monkeypatch):
    """Tracing on at `parentbased_traceidratio` 0, as setup() builds it: the spans begun
    (recording or not), the recording ones, and the ended ones."""
    asked, started, exporter = Asked(ParentBasedTraceIdRatio(0)), Started(), InMemorySpanExporter()
    provider = tracing.new_provider(asked)
    provider.add_span_processor(started)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    return asked.names, started.names, exporter


def traced_app(refuse: bool = False, propagate_exceptions: bool = False):
    """A Flask app with a route which answers the context it ran in, and one that fails;
    with refuse, a check installed after the instrumentation (as the gateway's are)
    refuses every request. With propagate_exceptions a failure leaves the app, where
    otherwise Flask answers it with a 500."""
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = propagate_exceptions
    request_spans.instrument(app)
    if refuse:
        app.before_request(lambda: abort(403))

    @app.patch("/albums/<int:album_id>")
    def patch(album_id):
        carrier = {}
        propagate.inject(carrier)
        return {"traceparent": carrier.get("traceparent"), "recording": trace.get_current_span().is_recording()}

    @app.get("/fails")
    def fails():
        raise LookupError("no such thing")

    return app.test_client()


@pytest.mark.parametrize("headers, decisions", [({}, ["PATCH"]), ({"traceparent": UNSAMPLED}, [])])
def test_a_request_not_sampled_begins_no_span_and_carries_its_context_on(spans, headers, decisions):
    asked, started, _ = spans
    answer = traced_app().patch("/albums/7", headers=headers).get_json()
    # Without a caller's decision the sampler makes one; with one, nothing is begun at all.
    assert asked == decisions and started == []
    assert answer["recording"] is False
    # Not sampled (the flags' lowest bit): what it calls follows the decision.
    assert not int(answer["traceparent"][-2:], 16) & 1
    if headers:
        assert answer["traceparent"] == UNSAMPLED


@pytest.fixture
def half_sampled(monkeypatch):
    """Tracing on at `parentbased_traceidratio` 0.5, as setup() builds it: the sampler's
    decisions and the ended spans."""
    asked, exporter = Asked(ParentBasedTraceIdRatio(0.5)), InMemorySpanExporter()
    provider = tracing.new_provider(asked)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    return asked.decisions, exporter


def test_a_new_trace_is_decided_on_its_own_id_and_a_sampled_one_keeps_it(half_sampled):
    decisions, exporter = half_sampled
    client = traced_app()
    answers = [client.patch("/albums/7").get_json()["traceparent"] for _ in range(40)]
    carried = {int(answer[3:35], 16): bool(int(answer[-2:], 16) & 1) for answer in answers}
    # Each request carries on the trace id its trace was decided on, and that decision.
    decided = {}
    for trace_id, sampled in decisions:
        decided.setdefault(trace_id, sampled)
    assert carried == decided and len(carried) == 40
    # A sampled one's span is in that trace (the SDK, asked again, decided alike); one not
    # sampled has none.
    exported = {span.context.trace_id for span in exporter.get_finished_spans()}
    assert exported == {trace_id for trace_id, sampled in carried.items() if sampled}
    assert 0 < len(exported) < 40


def test_a_request_with_no_context_is_decided_once_on_the_id_it_keeps(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = tracing.new_provider(ParentBasedTraceIdRatio(0.5))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    bound = tracing.tracer(__name__).sampler.new_trace_bound
    # Ids either side of the bound: the first sampled, the second not. A request that drew
    # a second id would take the next one, or run out.
    sampled_id, unsampled_id = (5 << 64) | 1, (6 << 64) | bound
    drawn = iter([sampled_id, unsampled_id])
    monkeypatch.setattr(provider.id_generator, "generate_trace_id", lambda: next(drawn))
    client = traced_app()
    answers = [client.patch("/albums/7").get_json() for _ in range(2)]
    assert [answer["recording"] for answer in answers] == [True, False]
    assert [int(answer["traceparent"][3:35], 16) for answer in answers] == [sampled_id, unsampled_id]
    assert [int(answer["traceparent"][-2:], 16) & 1 for answer in answers] == [1, 0]
    assert [span.context.trace_id for span in exporter.get_finished_spans()] == [sampled_id]


@pytest.mark.parametrize("name, argument", [
    ("always_on", None), ("always_off", None), ("traceidratio", "0.25"), ("traceidratio", "1"),
    ("parentbased_always_on", None), ("parentbased_always_off", None), ("parentbased_traceidratio", "0.1"),
    ("parentbased_traceidratio", "0"),
])
def test_a_new_trace_is_decided_from_its_id_as_the_configured_sampler_decides_it(monkeypatch, name, argument):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if argument is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    configured = TracerProvider(shutdown_on_exit=False).sampler
    tracer = tracing.new_provider(configured).get_tracer(__name__)
    # Ids across the bound of a ratio, and either side of it exactly.
    trace_ids = [random.getrandbits(128) or 1 for _ in range(2000)]
    bound = tracer.sampler.new_trace_bound
    assert bound is not None, "the SDK's own samplers are decided without asking them"
    trace_ids += [(7 << 64) | max(bound - 1, 1), (7 << 64) | bound]
    drawn = iter(trace_ids)
    monkeypatch.setattr(tracer.id_generator, "generate_trace_id", lambda: next(drawn))
    for trace_id in trace_ids:
        span, _ = tracing.span_if_sampled(tracer, "GET", trace.SpanKind.SERVER, context.Context())
        expected = configured.should_sample(None, trace_id, "GET").decision.is_sampled()
        # The decision made from the id alone, and what the request got.
        assert tracer.sampler.samples_new_trace(trace_id) is expected, f"{name} {argument}: trace id {trace_id:032x}"
        assert (span is not None) == expected
        if span is not None:
            assert span.get_span_context().trace_id == trace_id


def test_a_sampler_of_its_own_is_asked_for_each_new_trace(spans):
    asked, _, _ = spans
    tracer = tracing.tracer(__name__)
    assert tracer.sampler.samples_new_trace(1) is None
    tracing.span_if_sampled(tracer, "GET", trace.SpanKind.SERVER, context.Context())
    assert asked == ["GET"]


def test_a_sampled_request_has_its_server_span_with_the_route_and_status(spans):
    _, started, exporter = spans
    answer = traced_app().patch("/albums/7", headers={"traceparent": SAMPLED}).get_json()
    assert len(started) == 1
    assert answer["recording"] is True and int(answer["traceparent"][-2:], 16) & 1
    (span,) = exporter.get_finished_spans()
    assert span.name == "PATCH /albums/<int:album_id>"
    assert span.kind == trace.SpanKind.SERVER and f"{span.context.trace_id:032x}" == TRACE_ID
    assert (span.attributes["http.method"], span.attributes["http.route"], span.attributes["http.status_code"]) == (
        "PATCH", "/albums/<int:album_id>", 200)


def test_a_sampled_request_answered_before_flask_has_the_route_its_answer_names(spans):
    _, _, exporter = spans
    rule = "/albums/<album_id>"

    def answered_directly(environ, start_response):
        # As gateway.direct_rows answers a row's update, in no request context of Flask's.
        environ[direct_rows.ROUTE_KEY] = rule
        start_response("202 ACCEPTED", [("Content-Length", "0")])
        return [b""]

    app = Flask(__name__)
    app.wsgi_app = answered_directly
    request_spans.instrument(app)
    assert app.test_client().patch("/albums/7", headers={"traceparent": SAMPLED}).status_code == 202
    (span,) = exporter.get_finished_spans()
    assert span.name == f"PATCH {rule}"
    assert (span.attributes["http.route"], span.attributes["http.status_code"]) == (rule, 202)


def test_a_sampled_request_refused_by_a_check_has_its_route_too(spans):
    _, _, exporter = spans
    assert traced_app(refuse=True).patch("/albums/7", headers={"traceparent": SAMPLED}).status_code == 403
    (span,) = exporter.get_finished_spans()
    assert span.name == "PATCH /albums/<int:album_id>"
    assert (span.attributes["http.route"], span.attributes["http.status_code"]) == ("/albums/<int:album_id>", 403)


def test_a_sampled_request_answered_with_a_5xx_is_an_error_and_a_4xx_is_not(spans):
    _, _, exporter = spans
    client = traced_app()
    assert client.get("/fails", headers={"traceparent": SAMPLED}).status_code == 500
    assert client.get("/nowhere", headers={"traceparent": SAMPLED}).status_code == 404
    failed, missing = exporter.get_finished_spans()
    assert (failed.attributes["http.status_code"], failed.status.status_code) == (500, trace.StatusCode.ERROR)
    assert (missing.attributes["http.status_code"], missing.status.status_code) == (404, trace.StatusCode.UNSET)


def test_a_sampled_request_whose_error_leaves_the_app_records_it(spans):
    _, _, exporter = spans
    with pytest.raises(LookupError):
        traced_app(propagate_exceptions=True).get("/fails", headers={"traceparent": SAMPLED})
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "LookupError: no such thing"
    (event,) = span.events
    assert (event.name, event.attributes["exception.type"]) == ("exception", "LookupError")


def test_a_sampled_request_to_no_route_keeps_the_method_as_its_name(spans):
    _, _, exporter = spans
    assert traced_app().get("/nowhere", headers={"traceparent": SAMPLED}).status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET" and "http.route" not in span.attributes


def test_probes_begin_no_span_even_when_sampled(spans):
    asked, _, _ = spans
    client = traced_app()
    assert client.get("/healthz", headers={"traceparent": SAMPLED}).status_code == 404
    assert asked == []


def patch_of(row_id: int, traceparent: str | None = None, unsampled: bool = False) -> cache_pb2.RowPatch:
    return cache_pb2.RowPatch(entity="album", id=row_id, trace_unsampled=unsampled,
                              trace_context={"traceparent": traceparent} if traceparent else {})


def test_updates_not_sampled_begin_no_accepting_span_and_keep_no_link(spans):
    asked, started, exporter = spans
    patches = [patch_of(1, UNSAMPLED), patch_of(2), patch_of(3, SAMPLED.replace(TRACE_ID, "1" * 32))]
    with tracing.accept_spans(patches) as links:
        pass
    assert asked == started == ["write-back accept album"]
    assert links[:2] == [None, None] and links[2].startswith("1" * 32)
    assert exporter.get_finished_spans()[0].attributes["chinook.id"] == 3


def test_an_update_carrying_only_its_decision_gets_no_span_in_a_sampled_call(spans):
    _, started, exporter = spans
    call = tracing._tracer_of(tracing._provider).start_span(
        "UpdateRows", tracing.propagate.extract({"traceparent": SAMPLED}))
    # The flag wins over the context and over the call: an update without either follows
    # the call it came in.
    patches = [patch_of(1, unsampled=True), patch_of(2, SAMPLED.replace(TRACE_ID, "1" * 32), unsampled=True),
               patch_of(3)]
    with trace.use_span(call, end_on_exit=True), tracing.accept_spans(patches) as links:
        pass
    assert links[:2] == [None, None] and links[2].startswith(TRACE_ID)
    assert started == ["UpdateRows", "write-back accept album"]
    assert [span.attributes.get("chinook.id") for span in exporter.get_finished_spans()] == [3, None]


@pytest.mark.parametrize("headers, unsampled, carried", [
    ({}, True, set()), ({"traceparent": UNSAMPLED}, True, set()), ({"traceparent": SAMPLED}, False, {"traceparent"})])
def test_an_update_carries_its_requests_decision_and_a_context_only_when_sampled(spans, headers, unsampled,
                                                                                  carried):
    app = Flask(__name__)
    request_spans.instrument(app)

    @app.patch("/albums/<int:album_id>")
    def patch(album_id):
        row = cache_pb2.RowPatch(entity="album", id=album_id)
        row.trace_unsampled = tracing.carry_decision(row.trace_context)
        return {"unsampled": row.trace_unsampled, "context": dict(row.trace_context)}

    answer = app.test_client().patch("/albums/7", headers=headers).get_json()
    assert answer["unsampled"] is unsampled and set(answer["context"]) == carried
    if carried:
        assert answer["context"]["traceparent"].startswith(f"00-{TRACE_ID}-")


STREAM_METHOD = "/chinook.persistence.v1.PersistenceService/DuplicateRows"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"


@pytest.fixture
def server(spans):
    """A local gRPC server with SampledCalls before OpenTelemetry's interceptor, as services
    run it; its methods note the context each call ran in. Yields the channel to it and the
    notes, (trace id, sampled, instrumentations on) a call."""
    seen = []

    def note():
        span_context = trace.get_current_span().get_span_context()
        seen.append((f"{span_context.trace_id:032x}", span_context.trace_flags.sampled, is_instrumentation_enabled()))

    def unary(request, _context):
        note()
        return request

    def streamed(request, _context):
        for _ in range(2):
            note()
            yield request

    def services(name, methods):
        return grpc.method_handlers_generic_handler(name, methods)

    serving = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                          interceptors=[SampledCalls(server_interceptor(tracer_provider=tracing._provider))])
    serving.add_generic_rpc_handlers((
        services("chinook.cache.v1.CacheService", {"UpdateRows": grpc.unary_unary_rpc_method_handler(unary)}),
        services("chinook.persistence.v1.PersistenceService",
                 {"DuplicateRows": grpc.unary_stream_rpc_method_handler(streamed)}),
        services("grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(unary)})))
    port = serving.add_insecure_port("127.0.0.1:0")
    serving.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, seen
    finally:
        channel.close()
        serving.stop(None)


def test_calls_not_sampled_run_in_their_context_with_the_instrumentations_held_back(spans, server):
    asked, started, _ = spans
    channel, seen = server
    assert channel.unary_unary(METHOD)(b"request", metadata=(("traceparent", UNSAMPLED),)) == b"request"
    assert list(channel.unary_stream(STREAM_METHOD)(b"rows", metadata=(("traceparent", UNSAMPLED),))) == [b"rows"] * 2
    assert seen == [(TRACE_ID, False, False)] * 3
    assert asked == started == []
    # Outside the calls, the instrumentations work again.
    assert is_instrumentation_enabled()


def test_each_call_decides_alone_though_its_method_is_wrapped_once(spans, server):
    _, started, exporter = spans
    channel, seen = server
    other_trace = "1" * 32
    for parent in (UNSAMPLED, SAMPLED.replace(TRACE_ID, other_trace), UNSAMPLED):
        channel.unary_unary(METHOD)(b"request", metadata=(("traceparent", parent),))
    assert seen == [(TRACE_ID, False, False), (other_trace, True, True), (TRACE_ID, False, False)]
    assert started == [METHOD]
    (span,) = exporter.get_finished_spans()
    assert span.kind == trace.SpanKind.SERVER and f"{span.context.trace_id:032x}" == other_trace
    assert span.parent.span_id == int("b7ad6b7169203331", 16)


def test_a_sampled_stream_gets_its_span_and_health_checks_never_do(spans, server):
    _, started, _ = spans
    channel, seen = server
    sampled = (("traceparent", SAMPLED),)
    assert list(channel.unary_stream(STREAM_METHOD)(b"rows", metadata=sampled)) == [b"rows"] * 2
    channel.unary_unary(HEALTH_METHOD)(b"ping", metadata=sampled)
    assert started == [STREAM_METHOD]
    # The health check ran in no context at all: nothing was read from its metadata.
    assert seen[-1] == ("0" * 32, False, True)


class RecordingChannel(grpc.Channel):
    """A channel that answers every unary call at once (or fails it with `failure`) and
    keeps the metadata each call was sent with."""

    def __init__(self, failure: grpc.RpcError | None = None):
        self.sent = []
        self.failure = failure

    def unary_unary(self, method, *args, **kwargs):
        def call(request, timeout=None, metadata=None, *rest, **named):
            self.sent.append(dict(metadata or ()))
            if self.failure is not None:
                raise self.failure
            return "response"

        call.with_call = lambda *arguments, **named: (call(*arguments, **named), None)
        return call

    unary_stream = stream_unary = stream_stream = unary_unary

    def subscribe(self, callback, try_to_connect=False):
        pass

    def unsubscribe(self, callback):
        pass

    def close(self):
        pass


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "cache-svc is down"


def call_in(channel, parent: str, method: str = METHOD):
    """Makes a unary call on channel in the trace of `parent` (a traceparent); returns the
    metadata it was sent with."""
    incoming = tracing.propagate.extract({"traceparent": parent})
    token = context.attach(incoming)
    try:
        channel.unary_unary(method)("req", 5)
    except grpc.RpcError:
        pass
    finally:
        context.detach(token)
    return channel._channel.sent[-1]


def test_a_client_call_not_sampled_only_carries_the_context(spans):
    asked, started, exporter = spans
    channel = tracing.intercept_channel(RecordingChannel())
    assert call_in(channel, UNSAMPLED) == {"traceparent": UNSAMPLED}
    assert asked == []
    sent = call_in(channel, SAMPLED)
    (span,) = exporter.get_finished_spans()
    assert started == [METHOD] and span.kind == trace.SpanKind.CLIENT
    assert sent["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == ("chinook.cache.v1.CacheService",
                                                                              "UpdateRows")
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert span.status.is_ok


def test_a_sampled_call_with_its_rendezvous_gets_a_span_too(spans):
    _, started, exporter = spans
    channel = tracing.intercept_channel(RecordingChannel())
    incoming = tracing.propagate.extract({"traceparent": SAMPLED})
    token = context.attach(incoming)
    try:
        assert channel.unary_unary(METHOD).with_call("req", 5) == ("response", None)
    finally:
        context.detach(token)
    (span,) = exporter.get_finished_spans()
    assert started == [METHOD]
    assert channel._channel.sent[-1]["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


def test_a_sampled_client_call_that_fails_has_its_code_on_its_span(spans):
    _, _, exporter = spans
    channel = tracing.intercept_channel(RecordingChannel(failure=Unavailable()))
    with pytest.raises(Unavailable):
        channel.unary_unary(METHOD)("req", 5, (("x-request", "1"),))
    # The caller's own metadata goes along with the trace context.
    assert channel._channel.sent[-1]["x-request"] == "1"
    call_in(channel, SAMPLED)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "UNAVAILABLE: cache-svc is down"


def test_streams_carry_the_context_without_a_span_and_untraced_methods_carry_nothing(spans):
    _, started, _ = spans
    channel = tracing.intercept_channel(RecordingChannel())
    incoming = tracing.propagate.extract({"traceparent": SAMPLED})
    token = context.attach(incoming)
    try:
        channel.unary_stream("/chinook.cache.v1.CacheService/Export")("req")
        carried = channel._channel.sent[-1]
        channel.unary_stream("/chinook.cache.v1.CacheService/WatchChanges")("req")
        channel.unary_unary("/grpc.health.v1.Health/Check")("req")
        channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")("req")
    finally:
        context.detach(token)
    assert carried == {"traceparent": SAMPLED}
    assert channel._channel.sent[-3:] == [{}, {}, {}]
    assert started == []


def test_a_flush_of_sampled_writes_is_sampled_in_a_task_not_sampled(spans):
    _, started, exporter = spans
    link = f"{TRACE_ID}{5:016x}"
    task = tracing.propagate.extract({"traceparent": f"00-{'2' * 32}-{'3' * 16}-00"})
    token = context.attach(task)
    try:
        with tracing.flush_span("album", 1, [link], 0) as flush:
            assert flush.is_recording()
        with tracing.flush_span("album", 1, [], 0) as unlinked:
            assert not unlinked.is_recording()
    finally:
        context.detach(token)
    (span,) = exporter.get_finished_spans()
    # A trace of its own, not a child of the task span never recorded.
    assert span.parent is None and f"{span.context.trace_id:032x}" != "2" * 32
    assert [tracing.link_of(link.context) for link in span.links] == [link]
    assert started == ["write-back flush album"]


def test_a_new_trace_not_sampled_has_valid_ids_for_its_calls_and_log_lines(spans):
    asked, started, _ = spans
    span, request_context = tracing.span_if_sampled(tracing.tracer(__name__), "GET", trace.SpanKind.SERVER,
                                                    context.Context())
    assert span is None and asked == ["GET"] and started == []
    carried = trace.get_current_span(request_context)
    span_context = carried.get_span_context()
    assert not carried.is_recording() and span_context.is_valid and not span_context.trace_flags.sampled
    # Made once, when first read: every reader sees the same ids.
    assert carried.get_span_context() is span_context
    record = logging.LogRecord("chinook", logging.INFO, __file__, 1, "line", None, None)
    token = context.attach(request_context)
    try:
        logs.TraceContextFilter().filter(record)
    finally:
        context.detach(token)
    assert record.trace_id == f"{span_context.trace_id:032x}" and record.span_id == f"{span_context.span_id:016x}"
