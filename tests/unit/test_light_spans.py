"""chinook.light_spans: the same calls make, span for span, what the SDK's spans make once
exported (the exporters' own encoder and chinook.span_export alike), limits, events,
links, statuses and exceptions included; and the tracer decides as the SDK's does."""

import itertools

import pytest
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from chinook import light_spans, tracing
from chinook.light_spans import LightSpan, LightSpansProvider
from chinook.span_export import encode_spans

REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "value")]))


class CountingIds(IdGenerator):
    """Ids 1, 2, 3...: both providers draw the same ones in the same order."""

    def __init__(self):
        self.drawn = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self.drawn)

    def generate_trace_id(self) -> int:
        return next(self.drawn)


@pytest.fixture
def clock(monkeypatch):
    """Both kinds of span read a clock that ticks once a read, started anew for each."""
    def restart():
        ticks = itertools.count(1_000)
        monkeypatch.setattr(sdk_trace, "time_ns", lambda: next(ticks))
        monkeypatch.setattr(light_spans, "time_ns", lambda: next(ticks))
    return restart


def exercised(provider_class, clock, sampler=None):
    """Every call a span takes, through a provider of `provider_class`: nested current
    spans, every kind of attribute value, attributes past the limits, events, links valid
    and not, statuses in every order, an exception recorded and one escaping, an update
    of a name, and calls on an ended span."""
    clock()
    exporter = InMemorySpanExporter()
    kwargs = {"sampler": sampler} if sampler is not None else {}
    provider = provider_class(resource=Resource({"service.name": "gateway"}), id_generator=CountingIds(),
                              span_limits=SpanLimits(max_span_attributes=12, max_events=2, max_links=2,
                                                     max_event_attributes=2, max_attribute_length=40),
                              **kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("plain")
    scoped = provider.get_tracer("scoped", "1.2", "https://schema/scope", {"scope.attribute": True})
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.method": "GET"}) as root:
        root.set_attributes({"a.bool": False, "a.float": 0.25, "a.negative": -7, "a.strings": ["x", "y"],
                             "a.ints": [1, 2, 3], "a.bytes": b"\x00", "a.none": None, "a.long": "x" * 60,
                             "a.object": object, "": "no key", "a.map": {"k": [1, 2]}})
        root.set_attribute("http.method", "PATCH")
        for index in range(4):
            root.set_attribute(f"beyond.{index}", index)
        root.add_event("cached", {"tier": "near", "rows": 1, "third": 3})
        root.add_event("bare", timestamp=7)
        root.add_event("third")
        root.update_name("GET /albums/<id>")
        with scoped.start_as_current_span("UpdateRows", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "cache-svc is down"))
            child.set_status(StatusCode.UNSET)
            child.set_status(StatusCode.OK, "ignored? no: a code and its description")
            child.set_status(Status(StatusCode.ERROR))
    remote_parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    linked = tracer.start_span("write-back accept album", remote_parent, SpanKind.INTERNAL,
                               links=[Link(REMOTE, {"link.attribute": "x"}), Link(trace.INVALID_SPAN_CONTEXT),
                                      Link(trace.INVALID_SPAN_CONTEXT, {"kept": "for its attribute"}),
                                      Link(SpanContext(5, 6, False))])
    linked.add_link(SpanContext(7, 8, False), {"added": 1})
    try:
        raise ValueError("a bad row")
    except ValueError as exc:
        linked.record_exception(exc, {"extra": 1}, timestamp=9)
    linked.end()
    linked.set_attribute("after", "end")
    linked.update_name("after end")
    linked.end()
    with pytest.raises(KeyError), tracer.start_as_current_span("escaping", record_exception=False):
        raise KeyError("id")
    with pytest.raises(KeyError), tracer.start_as_current_span("escaping, recorded", set_status_on_exception=False):
        raise KeyError("id")
    tracer.start_span("started at", start_time=5).end(end_time=6)
    return exporter.get_finished_spans()


def without_stacktraces(request):
    """The request with the exceptions' stack traces blanked: the frames of the two
    implementations differ, and only there."""
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                for event in span.events:
                    for attribute in event.attributes:
                        if attribute.key == "exception.stacktrace":
                            assert attribute.value.string_value.startswith("Traceback")
                            attribute.value.string_value = ""
    return request


@pytest.mark.parametrize("encode", [library_encode_spans, encode_spans], ids=["library encoder", "span_export"])
def test_light_spans_export_as_the_sdks_do(clock, encode):
    sdk_spans = exercised(TracerProvider, clock)
    light = exercised(LightSpansProvider, clock)
    assert all(isinstance(span, LightSpan) for span in light) and len(light) == len(sdk_spans) == 6
    ours, theirs = without_stacktraces(encode(light)), without_stacktraces(encode(sdk_spans))
    assert ours == theirs
    # What was compared holds what was meant to be.
    root = next(span for scope in ours.resource_spans[0].scope_spans for span in scope.spans
                if span.name == "GET /albums/<id>")
    assert root.dropped_attributes_count > 0 and root.dropped_events_count == 1
    assert {attribute.key: attribute.value.string_value for attribute in root.attributes}["http.method"] == "PATCH"
    accept = next(span for scope in ours.resource_spans[0].scope_spans for span in scope.spans
                  if span.name == "write-back accept album")
    assert accept.dropped_links_count == 2 and accept.events[0].name == "exception"


def test_the_comparison_can_fail(clock):
    sdk_spans = exercised(TracerProvider, clock)
    light = exercised(LightSpansProvider, clock)
    light[0].attributes["http.method"] = "POST"
    assert without_stacktraces(encode_spans(light)) != without_stacktraces(encode_spans(sdk_spans))


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.5))], ids=["off", "ratio"])
def test_the_tracer_decides_as_the_sdks(clock, sampler):
    decisions = {}
    for provider_class in (TracerProvider, LightSpansProvider):
        clock()
        tracer = provider_class(sampler=sampler, id_generator=CountingIds()).get_tracer("x")
        spans = [tracer.start_span(f"{n}", context.Context()) for n in range(20)]
        child = tracer.start_span("child", trace.set_span_in_context(trace.NonRecordingSpan(REMOTE)))
        decisions[provider_class] = [(span.is_recording(), span.get_span_context()) for span in [*spans, child]]
    assert decisions[TracerProvider] == decisions[LightSpansProvider]


def test_a_disabled_provider_makes_no_spans(monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    span = LightSpansProvider().get_tracer("x").start_span("GET")
    assert not span.is_recording()


class RecordOnly(Sampler):
    """A sampler of its own: records every span without sampling it, adding an attribute
    and a trace state."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None):
        return SamplingResult(Decision.RECORD_ONLY, {**(attributes or {}), "sampler.attribute": 1},
                              TraceState([("sampler", "yes")]))

    def get_description(self):
        return "RecordOnly"


def test_a_new_trace_a_sampler_of_its_own_decides_begins_as_the_sdk_begins_it():
    sdk_span = TracerProvider(sampler=RecordOnly()).get_tracer("x").start_span(
        "GET", context.Context(), SpanKind.SERVER, {"http.method": "GET"})
    tracer = tracing.new_provider(RecordOnly()).get_tracer("x")
    light, _ = tracing.span_if_sampled(tracer, "GET", SpanKind.SERVER, context.Context(),
                                       lambda: {"http.method": "GET"})
    assert isinstance(light, LightSpan) and light.is_recording() and sdk_span.is_recording()
    for span in (light, sdk_span):
        span_context = span.get_span_context()
        assert not span_context.trace_flags.sampled and span_context.trace_state == TraceState([("sampler", "yes")])
    assert light.get_span_context().trace_flags == sdk_span.get_span_context().trace_flags
    assert dict(light.attributes) == dict(sdk_span.attributes) == {"http.method": "GET", "sampler.attribute": 1}
