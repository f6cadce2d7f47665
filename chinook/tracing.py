"""OpenTelemetry traces for every process, set up from the standard OTEL_* variables
(docs/tracing.md).

Tracing is on only when an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Without one, setup() installs nothing: no tracer
provider, no exporter or its thread, no instrumentation, and every helper here returns
what it was given or a no-op at once, so the request path costs what it did before.

The SDK reads its own variables (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_*, OTEL_EXPORTER_OTLP_* headers, timeout,
certificates, OTEL_PROPAGATORS); only the protocol is read here, to pick the exporter.
A forking server must call setup() in each child, after the fork: an exporter's gRPC
channel and the batch processor's thread do not survive one.

With tracing on, a request costs what it samples: the sampling decision comes first, from
the caller's context or the configured sampler, and a request not sampled makes no span and
runs no instrumentation; it only carries its context on, so that every process after it
decides alike.
"""

import contextlib
import functools
import logging
import os
import sys

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.trace.span import _SPAN_ID_MAX_VALUE, _TRACE_ID_MAX_VALUE

from .trace_provider import hashed_once, new_provider

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("grpc", "http/protobuf")
# The OpenTelemetry specification's default.
DEFAULT_PROTOCOL = "http/protobuf"
# A kept span context: trace id (32 hex digits) then span id (16), always sampled.
LINK_WIDTH = 48
# Span contexts kept per pending row: its latest accepted writes since the last claim.
LINKS_PER_ROW = 4
# Links of one flush span; the rest are counted in chinook.links_dropped.
MAX_FLUSH_LINKS = 32

# Requests with no span: probes, scrapes and the console's static files would bury the
# requests that matter.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics", "/console")
# gRPC calls with no span: health checks and reflection come every few seconds; the change
# stream lasts as long as the gateway, a span no one would ever see ended.
UNTRACED_SERVICES = ("/grpc.health.", "/grpc.reflection.")
UNTRACED_METHODS = ("/WatchChanges",)

# A new trace's flags when not sampled: its id is random (W3C trace context level 2), as the
# SDK marks the ids of its random generator.
_UNSAMPLED_RANDOM_ID = trace.TraceFlags(trace.TraceFlags.RANDOM_TRACE_ID)

# The provider this process set up; None while tracing is off.
_provider = None


def wanted(environ=None) -> bool:
    """True when the variables ask for traces: an OTLP endpoint is set and the SDK is not
    disabled (OTEL_SDK_DISABLED=true)."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    """True once setup() turned tracing on in this process."""
    return _provider is not None


def protocol(environ=None) -> str:
    """The OTLP protocol the variables choose; raises ValueError naming a bad one."""
    environ = os.environ if environ is None else environ
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip()
        if value:
            if value not in PROTOCOLS:
                raise ValueError(f"{name}={value!r} must be one of {', '.join(PROTOCOLS)}")
            return value
    return DEFAULT_PROTOCOL


def _exporter(chosen: str):
    # Each exporter reads the endpoint, headers, timeout, compression and certificates
    # from the OTEL_EXPORTER_OTLP_* variables itself.
    from .span_export import OtlpGrpcSpanExporter, OtlpHttpSpanExporter

    return OtlpGrpcSpanExporter() if chosen == "grpc" else OtlpHttpSpanExporter()


def _instrument_celery():
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    CeleryInstrumentor().instrument()


def _instrument_psycopg2():
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
    # Before any connection is opened: it wraps psycopg2.connect.
    Psycopg2Instrumentor().instrument(enable_commenter=False)


def _instrument_redis():
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    RedisInstrumentor().instrument()


INSTRUMENTATIONS = {"celery": _instrument_celery, "psycopg2": _instrument_psycopg2, "redis": _instrument_redis}


def setup(service: str, *instrumentations: str) -> bool:
    """Turns tracing on in this process if the variables ask for it: a tracer provider
    named `service` (unless OTEL_SERVICE_NAME or service.name in OTEL_RESOURCE_ATTRIBUTES
    names it), an OTLP exporter behind a batch processor, and the instrumentations named
    (celery, psycopg2, redis; Flask and gRPC go through the helpers below). Returns whether
    tracing is on. A bad protocol stops the process with a message naming the variable."""
    global _provider
    if _provider is not None or not wanted():
        return _provider is not None
    try:
        chosen = protocol()
    except ValueError as exc:
        sys.exit(f"configuration error: {exc}")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG configure (a provider's
    # default), with flushes of sampled writes always sampled; the batch processor's limits
    # come from OTEL_BSP_*.
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = new_provider(configured, hashed_once(resource))
    provider.add_span_processor(BatchSpanProcessor(_exporter(chosen)))
    trace.set_tracer_provider(provider)
    _provider = provider
    for name in instrumentations:
        INSTRUMENTATIONS[name]()
    log.info("tracing on: %s spans over OTLP %s", resource.attributes[SERVICE_NAME], chosen)
    return True


def shutdown():
    """Exports the spans still buffered and stops the exporter; a no-op when off."""
    if _provider is not None:
        _provider.shutdown()


def unsampled_new_trace(tracer, root: context.Context) -> tuple[int, context.Context | None]:
    """A new trace's id, drawn from the provider's ids, and, when the sampler leaves a trace
    of that id out, the context a request of it runs in (`root` with an _UnsampledRoot of
    that id), or None when it is sampled or the sampler must be asked (span_if_sampled,
    given the id, then decides and begins it; without one, it starts here). For a request carrying no caller's context, most of
    them: one not sampled pays for the id, the decision and its context, and nothing else
    (0.67 µs alone, against 1.02 through span_if_sampled)."""
    ids = tracer.id_generator
    trace_id = ids.generate_trace_id()
    if tracer.sampler.samples_new_trace(trace_id) is False:
        return trace_id, trace.set_span_in_context(_UnsampledRoot(trace_id, ids), root)
    return trace_id, None


def span_if_sampled(tracer, name: str, kind: trace.SpanKind, parent=None, attributes=None,
                    trace_id: int | None = None):
    """The span a request starts, or None when its trace is not sampled, and the context
    to run it in. A parent context that is not sampled decides at once, without asking the
    sampler or making a span. A new trace is decided here, on a trace id drawn from the
    provider's ids (or `trace_id`, drawn by unsampled_new_trace): one not sampled runs under
    an _UnsampledRoot of that id, and a sampled one begins its span with that id, the
    sampler not asked again (the SDK's start_span and the non-recording span it made cost a
    trace not sampled twice what deciding it here does). A sampled parent's span is begun
    by the tracer, whose sampler follows the parent. `attributes`, a function called only
    for a sampled span, gives the attributes it begins with: one check of them all, where
    setting them after took one per call."""
    parent_span = trace.get_current_span(parent).get_span_context()
    if parent_span.is_valid:
        if not parent_span.trace_flags.sampled:
            return None, parent if parent is not None else context.get_current()
        span = tracer.start_span(name, parent, kind, attributes() if attributes else None)
    else:
        if trace_id is None:
            trace_id, unsampled = unsampled_new_trace(tracer, context.get_current() if parent is None else parent)
            if unsampled is not None:
                return None, unsampled
        # Sampled on its id, or the sampler must be asked.
        sampling = None
        if tracer.sampler.samples_new_trace(trace_id) is None:
            sampling = tracer.sampler.should_sample(parent, trace_id, name, kind)
            if not sampling.decision.is_recording():
                return None, trace.set_span_in_context(_UnsampledRoot(trace_id, tracer.id_generator), parent)
        span = tracer.start_new_trace(name, parent, kind, trace_id, attributes() if attributes else None, sampling)
    return (span if span.is_recording() else None), trace.set_span_in_context(span, parent)


def local_span_context(trace_id: int, span_id: int, flags, trace_state=None) -> trace.SpanContext:
    """SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags,
    trace_state=trace_state), made as its __new__ makes it but without the call's keyword
    handling, which took three quarters of its cost (a span of every sampled request and a
    context of every unsampled one are made this way)."""
    return tuple.__new__(trace.SpanContext, (trace_id, span_id, False, flags, trace_state or trace.DEFAULT_TRACE_STATE,
                                             0 < trace_id <= _TRACE_ID_MAX_VALUE and 0 < span_id <= _SPAN_ID_MAX_VALUE))


class _UnsampledRoot(trace.NonRecordingSpan):
    """The span of a new trace not sampled: no more than its trace id until something reads
    its span context (a call carrying the decision on, a log line), which most such
    requests never do; its span id is drawn then, from `ids`."""

    def __init__(self, trace_id: int, ids):
        # What NonRecordingSpan.__init__ sets, without the call.
        self._context = None
        self._trace_id = trace_id
        self._ids = ids

    def get_span_context(self) -> trace.SpanContext:
        if self._context is None:
            self._context = local_span_context(self._trace_id, self._ids.generate_span_id(), _UNSAMPLED_RANDOM_ID)
        return self._context

    def __repr__(self) -> str:
        return f"_UnsampledRoot({self.get_span_context()!r})"


@functools.cache
def _tracer_of(provider):
    """This module's tracer of a provider: the SDK makes a new one on every get_tracer
    call, which cost a batch of updates more than deciding their sampling."""
    return provider.get_tracer(__name__)


def tracer(name: str):
    """A tracer of the provider setup() made, or None while tracing is off."""
    return _provider.get_tracer(name) if _provider is not None else None


def untraced_method(method: str) -> bool:
    """True for the gRPC methods that never make a span (UNTRACED_SERVICES, UNTRACED_METHODS)."""
    return method.startswith(UNTRACED_SERVICES) or method.endswith(UNTRACED_METHODS)


def grpc_server_interceptors() -> list:
    """The OpenTelemetry interceptor that makes a span of each call a server takes, for
    the calls sampled (chinook.grpc_server.SampledCalls decides); none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor
    return [server_interceptor()]


def unsampled_context(metadata):
    """The context to run a call in when its metadata carries a trace that is not sampled:
    that trace's, with the instrumentations (Redis commands, SQL statements, task spans)
    held back, so that the call's own calls carry it on and make no span. None otherwise
    (no context, or a sampled one)."""
    incoming = propagate.extract({item.key: item.value for item in metadata or ()})
    parent = trace.get_current_span(incoming).get_span_context()
    if not parent.is_valid or parent.trace_flags.sampled:
        return None
    return context.Context({**incoming, **_held_back()})


@functools.cache
def _held_back() -> dict:
    """The values OpenTelemetry's suppress_instrumentation() sets, to merge into a call's
    context in one step rather than entering it on every call."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    token = context.attach(context.Context())
    try:
        with suppress_instrumentation():
            return dict(context.get_current())
    finally:
        context.detach(token)


class _TracedChannel(grpc.Channel):
    """A channel whose unary calls make a client span when their trace is sampled (or the
    sampler starts one); every call carries the trace context on, sampled or not, so that
    the server decides alike. Streaming calls carry the context only; the untraced methods
    (untraced_method) carry nothing.

    Not grpc.intercept_channel: its interceptor machinery (call details, a continuation,
    an outcome object per call) cost a call more CPU than the decision itself."""

    def __init__(self, channel: grpc.Channel):
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled

        self._channel = channel
        self._tracer = _tracer_of(_provider)
        # False inside untraced() and in calls of traces not sampled.
        self._instrumenting = is_instrumentation_enabled

    def unary_unary(self, method, *args, **kwargs):
        call = self._channel.unary_unary(method, *args, **kwargs)
        return call if untraced_method(method) else _TracedUnaryCall(call, method, self._tracer, self._instrumenting)

    def unary_stream(self, method, *args, **kwargs):
        return _carrying_call(method, self._channel.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method, *args, **kwargs):
        return _carrying_call(method, self._channel.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method, *args, **kwargs):
        return _carrying_call(method, self._channel.stream_stream(method, *args, **kwargs))

    def subscribe(self, callback, try_to_connect=False):
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        self._channel.unsubscribe(callback)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()
        return False


def _carrying_call(method: str, call):
    return call if untraced_method(method) else _CarryingCall(call)


class _CarryingCall:
    """A method called with the current trace context added to its metadata."""

    __slots__ = ("_call",)

    def __init__(self, call):
        self._call = call

    def __call__(self, request, timeout=None, metadata=None, *args, **kwargs):
        return self._call(request, timeout, _carrying(metadata), *args, **kwargs)

    def with_call(self, request, timeout=None, metadata=None, *args, **kwargs):
        return self._call.with_call(request, timeout, _carrying(metadata), *args, **kwargs)

    def future(self, request, timeout=None, metadata=None, *args, **kwargs):
        return self._call.future(request, timeout, _carrying(metadata), *args, **kwargs)


class _TracedUnaryCall(_CarryingCall):
    """A unary method whose blocking calls (the call itself and with_call) get a client
    span when sampled; a future carries the context only."""

    __slots__ = ("_attributes", "_instrumenting", "_method", "_tracer")

    def __init__(self, call, method: str, tracer, instrumenting):
        super().__init__(call)
        self._method = method
        self._tracer = tracer
        self._instrumenting = instrumenting
        service, _, name = method.lstrip("/").partition("/")
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def __call__(self, request, timeout=None, metadata=None, *args, **kwargs):
        return self._traced(self._call, request, timeout, metadata, args, kwargs)

    def with_call(self, request, timeout=None, metadata=None, *args, **kwargs):
        return self._traced(self._call.with_call, request, timeout, metadata, args, kwargs)

    def _traced(self, invoke, request, timeout, metadata, args, kwargs):
        span, call_context = None, None
        if self._instrumenting():
            span, call_context = span_if_sampled(self._tracer, self._method, trace.SpanKind.CLIENT)
        metadata = _carrying(metadata, call_context)
        if span is None:
            return invoke(request, timeout, metadata, *args, **kwargs)
        span.set_attributes(self._attributes)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                response = invoke(request, timeout, metadata, *args, **kwargs)
            except grpc.RpcError as exc:
                code = exc.code()
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {exc.details()}"))
                raise
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
            return response


def _carrying(metadata, call_context=None):
    """The call's metadata with the trace context (the current one, or call_context) added."""
    carrier = {}
    propagate.inject(carrier, context=call_context)
    if not carrier:
        return metadata
    return (*(metadata or ()), *carrier.items())


def intercept_channel(channel):
    """The channel, making a span of each sampled call and sending the trace context along when on."""
    if _provider is None:
        return channel
    return _TracedChannel(channel)


def untraced():
    """A context in which the instrumentations make no span: for background loops (polls,
    probes, scrapes) whose calls would each start a trace of their own."""
    if _provider is None:
        return contextlib.nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation
    return suppress_instrumentation()


def carry_decision(carrier) -> bool:
    """Carries the current request's sampling decision on to one of the updates it sends:
    its trace context into carrier when sampled. Returns True when tracing is on and the
    request is not sampled, for the update to carry that alone: formatting a context on
    every update, and parsing it again in cache-svc, only to learn that it is not sampled
    cost more than the updates' few sampled spans."""
    if _provider is None:
        return False
    if not trace.get_current_span().get_span_context().trace_flags.sampled:
        return True
    propagate.inject(carrier)
    return False


# Span links from a flush back to the writes it made durable.

def link_of(span_context) -> str | None:
    """A span context as kept with a pending row, or None when it is not worth keeping
    (invalid, or not sampled: a link to a span never exported leads nowhere)."""
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return f"{span_context.trace_id:032x}{span_context.span_id:016x}"


def current_link() -> str | None:
    """The current span's context, to keep with the rows it writes; None when off."""
    if _provider is None:
        return None
    return link_of(trace.get_current_span().get_span_context())


def split_links(kept: str) -> list[str]:
    """The span contexts a row kept, in the order they were accepted."""
    return [kept[i:i + LINK_WIDTH] for i in range(0, len(kept) - LINK_WIDTH + 1, LINK_WIDTH)]


def bounded_links(links, limit: int = MAX_FLUSH_LINKS) -> tuple[list[str], int]:
    """The distinct links, the first `limit` of them, and how many distinct ones are left out."""
    distinct = list(dict.fromkeys(link for link in links if link))
    return distinct[:limit], max(0, len(distinct) - limit)


def span_context_of(link: str) -> trace.SpanContext:
    return trace.SpanContext(int(link[:32], 16), int(link[32:LINK_WIDTH], 16), is_remote=True,
                             trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))


def flush_span(entity: str, rows: int, links, links_dropped: int):
    """The span of one flush of `rows` rows, linked to the spans that accepted them (at
    most MAX_FLUSH_LINKS; links_dropped counts the others). A flush with links is always
    sampled: where its task's trace is not, it starts a trace of its own. Yields the span,
    a no-op one when tracing is off."""
    if _provider is None:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    links = list(links)
    dropped = links_dropped + max(0, len(links) - MAX_FLUSH_LINKS)
    links = links[:MAX_FLUSH_LINKS]
    parent = None
    if links and not trace.get_current_span().get_span_context().trace_flags.sampled:
        parent = context.Context()
    return _tracer_of(_provider).start_as_current_span(
        f"write-back flush {entity}", context=parent, kind=trace.SpanKind.INTERNAL,
        links=[trace.Link(span_context_of(link)) for link in links],
        attributes={"chinook.entity": entity, "chinook.rows": rows, "chinook.links_dropped": dropped},
    )


def mark_flushed(flush, entity: str, links, written: int, refused: int):
    """Puts into each linked write's own trace a span, a child of its accepting span,
    linked to the flush span: links go from the flush back to the writes, and these lead
    from a write's trace forward to the flush. A no-op when off."""
    if _provider is None or not flush.is_recording():
        return
    tracer = _tracer_of(_provider)
    for link in list(links)[:MAX_FLUSH_LINKS]:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(span_context_of(link)))
        tracer.start_span(f"write-back flushed {entity}", context=parent, links=[trace.Link(flush.get_span_context())],
                          attributes={"chinook.entity": entity, "chinook.rows_written": written,
                                      "chinook.rows_refused": refused}).end()


@contextlib.contextmanager
def accept_spans(patches):
    """For a batch of updates from several requests (the gateway gathers them into one
    call), one span per sampled update, a child of the request it came from (its W3C
    context in the patch's trace_context; the current span where it carries none or the
    same trace), linked to the batch's call. A patch marked trace_unsampled (carry_decision)
    gets none, whatever the call decided, and its context is not read. Yields the link to
    keep for each update (None where not sampled)."""
    tracer = _tracer_of(_provider)
    call = trace.get_current_span()
    batch = call.get_span_context()
    spans = []
    try:
        for patch in patches:
            if patch.trace_unsampled:
                spans.append(None)
                continue
            carrier = patch.trace_context
            parent = propagate.extract(carrier) if carrier else None
            request = trace.get_current_span(parent).get_span_context() if parent is not None else None
            own_trace = request is not None and request.is_valid and request.trace_id != batch.trace_id
            if not (request.trace_flags.sampled if own_trace else call.is_recording()):
                spans.append(None)
                continue
            spans.append(tracer.start_span(
                f"write-back accept {patch.entity}", context=parent if own_trace else None,
                links=[trace.Link(batch)] if own_trace and batch.is_valid else None,
                attributes={"chinook.entity": patch.entity, "chinook.id": patch.id}))
        yield [span and link_of(span.get_span_context()) for span in spans]
    finally:
        for span in spans:
            if span is not None:
                span.end()


def add_event(name: str, **attributes):
    """An event on the current span (a retry, a dead letter); a no-op when off."""
    if _provider is not None:
        trace.get_current_span().add_event(name, attributes)

