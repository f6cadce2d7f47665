"""The pure parts of tracing: when it is wanted, the protocol, the links a flush keeps,
and the trace context in log lines."""

import io
import json
import logging

import pytest
from opentelemetry import trace

from chinook import logs, trace_provider, tracing

TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def span_context(sampled=True, trace_id=TRACE_ID, span_id=SPAN_ID):
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)


@pytest.mark.parametrize("environ, wanted", [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_SDK_DISABLED": "true"}, False),
    # Only a service name, sampler or resource: still nothing to send spans to.
    ({"OTEL_SERVICE_NAME": "gateway", "OTEL_TRACES_SAMPLER": "always_on"}, False),
])
def test_tracing_is_wanted_only_with_an_endpoint(environ, wanted):
    assert tracing.wanted(environ) is wanted


def test_the_resource_is_hashed_once_and_stays_the_same_resource(monkeypatch):
    from opentelemetry.sdk import resources

    resource = resources.Resource.create({"service.name": "gateway"})
    hashed = trace_provider.hashed_once(resource)
    assert hashed == resource and hash(hashed) == hash(resource)
    assert hashed.attributes == resource.attributes and hashed.schema_url == resource.schema_url
    # The exporter hashes it for every span it encodes: no JSON of its attributes then.
    monkeypatch.setattr(resources, "dumps", lambda *args, **kwargs: pytest.fail("hashed again"))
    assert len({hash(hashed) for _ in range(3)}) == 1


@pytest.mark.parametrize("environ, chosen", [
    ({}, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http/protobuf"),
])
def test_the_protocol_follows_the_traces_variable_first(environ, chosen):
    assert tracing.protocol(environ) == chosen


def test_an_unknown_protocol_is_refused_by_name():
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json' must be one of grpc, http/protobuf"):
        tracing.protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.parametrize("trace_id, span_id, flags, trace_state", [
    (TRACE_ID, SPAN_ID, trace.TraceFlags(trace.TraceFlags.SAMPLED | trace.TraceFlags.RANDOM_TRACE_ID), None),
    (TRACE_ID, SPAN_ID, trace.TraceFlags(trace.TraceFlags.DEFAULT), trace.TraceState([("vendor", "value")])),
    # Ids out of range, which no id generator of the SDK gives: invalid, as the SDK has it.
    (0, SPAN_ID, trace.TraceFlags(1), None),
    (TRACE_ID, 0, trace.TraceFlags(1), None),
    (1 << 128, SPAN_ID, trace.TraceFlags(1), None),
    (TRACE_ID, 1 << 64, trace.TraceFlags(1), None),
])
def test_a_local_span_context_is_the_one_the_sdk_makes(trace_id, span_id, flags, trace_state):
    made = tracing.local_span_context(trace_id, span_id, flags, trace_state)
    expected = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=trace_state)
    assert type(made) is trace.SpanContext and made == expected
    assert (made.trace_id, made.span_id, made.is_remote, made.trace_flags, made.trace_state, made.is_valid) == \
        (expected.trace_id, expected.span_id, False, flags, expected.trace_state, expected.is_valid)


def test_only_sampled_valid_span_contexts_are_kept_as_links():
    link = tracing.link_of(span_context())
    assert link == "0af7651916cd43dd8448eb211c80319cb7ad6b7169203331"
    assert len(link) == tracing.LINK_WIDTH
    assert tracing.link_of(span_context(sampled=False)) is None
    assert tracing.link_of(trace.INVALID_SPAN_CONTEXT) is None
    back = tracing.span_context_of(link)
    assert (back.trace_id, back.span_id, back.trace_flags.sampled) == (TRACE_ID, SPAN_ID, True)


def test_current_link_is_none_while_tracing_is_off():
    with trace.use_span(trace.NonRecordingSpan(span_context())):
        assert tracing.current_link() is None


def test_kept_links_split_back_in_order():
    links = [tracing.link_of(span_context(span_id=n)) for n in (1, 2, 3)]
    assert tracing.split_links("".join(links)) == links
    assert tracing.split_links("") == []


def test_a_flush_links_distinct_contexts_up_to_the_bound_and_counts_the_rest():
    links = [f"{n:048x}" for n in range(40)]
    kept, dropped = tracing.bounded_links(links + links[:5] + ["", None])
    assert kept == links[:tracing.MAX_FLUSH_LINKS]
    assert dropped == 40 - tracing.MAX_FLUSH_LINKS
    assert tracing.bounded_links(links[:3], limit=5) == (links[:3], 0)
    assert tracing.bounded_links([]) == ([], 0)


def test_helpers_pass_through_while_tracing_is_off():
    channel = object()
    assert tracing.intercept_channel(channel) is channel
    assert tracing.grpc_server_interceptors() == []
    carrier = {}
    assert tracing.carry_decision(carrier) is False and carrier == {}
    with tracing.flush_span("album", 3, ["0" * 48], 0) as span:
        assert span is trace.INVALID_SPAN


def test_a_flush_span_keeps_the_bound_and_counts_links_left_out_on_either_side(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    links = [f"{TRACE_ID:032x}{n + 1:016x}" for n in range(tracing.MAX_FLUSH_LINKS + 3)]
    with tracing.flush_span("album", 40, links, 2):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "write-back flush album"
    assert [link.context.span_id for link in span.links] == list(range(1, tracing.MAX_FLUSH_LINKS + 1))
    assert span.attributes["chinook.links_dropped"] == 2 + 3


def log_line(log_format: str, span=None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("cache-svc", log_format))
    handler.addFilter(logs.TraceContextFilter())
    logger = logging.getLogger("test.tracing.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if span is None:
            logger.warning("flushed %d rows", 3)
        else:
            with trace.use_span(span):
                logger.warning("flushed %d rows", 3)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_text_lines_are_as_before_outside_a_span_and_end_with_its_ids_inside_one():
    outside = log_line("text")
    assert outside.rstrip("\n").endswith("WARNING cache-svc test.tracing.logs: flushed 3 rows")
    inside = log_line("text", trace.NonRecordingSpan(span_context()))
    assert inside.rstrip("\n").endswith(
        "flushed 3 rows trace_id=0af7651916cd43dd8448eb211c80319c span_id=b7ad6b7169203331")


def test_json_lines_are_one_object_each_with_the_span_when_there_is_one():
    outside = json.loads(log_line("json"))
    assert {k: outside[k] for k in ("level", "service", "logger", "message")} == {
        "level": "WARNING", "service": "cache-svc", "logger": "test.tracing.logs", "message": "flushed 3 rows"}
    assert "time" in outside and "trace_id" not in outside
    text = log_line("json", trace.NonRecordingSpan(span_context()))
    assert text.count("\n") == 1
    inside = json.loads(text)
    assert (inside["trace_id"], inside["span_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
