"""Spans made at a fraction of the SDK's cost, for every tracer of the provider
chinook.tracing sets up (docs/tracing.md, "The cost").

The SDK's span takes a lock and builds a bounded mapping of its attributes, checks every
value through a generic cleaner, and on end copies itself into a second, readable object
for the span processors: 30 µs a span of the gateway's six attributes, more than a read
from the near cache costs in all. A LightSpan is one object with its attributes in a dict,
checked by type with the SDK's cleaner as the fallback, and it is itself what the
processors get when it ends. Everything around it stays the SDK's: the sampler, the ids,
the span limits, the span processors and the exporters (chinook.span_export reads a
LightSpan as it reads the SDK's spans; tests/unit/test_light_spans.py compares the two).
"""

import contextlib
import logging
import traceback
from time import time_ns

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.sdk.trace import Event, Tracer, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Status, StatusCode

from .tracing import local_span_context

log = logging.getLogger(__name__)

# Values kept as they are when no length limit applies; anything else goes through the
# SDK's cleaner (sequences become tuples, other types strings or nothing).
_PLAIN_TYPES = frozenset((str, bool, int, float, bytes, type(None)))
_KEY_TYPES = frozenset((str,))
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_SAMPLED_RANDOM = trace.TraceFlags(trace.TraceFlags.SAMPLED | trace.TraceFlags.RANDOM_TRACE_ID)
_DEFAULT = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_DEFAULT_RANDOM = trace.TraceFlags(trace.TraceFlags.RANDOM_TRACE_ID)
_DROP, _RECORD_AND_SAMPLE = Decision.DROP, Decision.RECORD_AND_SAMPLE


class LightSpansProvider(TracerProvider):
    """The SDK's tracer provider, its tracers making LightSpans."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._light_tracers = {}

    def get_tracer(self, *args, **kwargs):
        tracer = super().get_tracer(*args, **kwargs)
        if not isinstance(tracer, Tracer):
            # A disabled provider's no-op tracer.
            return tracer
        light = self._light_tracers.get(tracer)
        if light is None:
            light = self._light_tracers.setdefault(tracer, LightTracer(tracer))
        return light


class LightTracer(trace.Tracer):
    """The SDK tracer's start_span, step for step (parent, ids, the sampler's decision,
    flags), making LightSpans; a tracer the provider disabled makes none."""

    def __init__(self, sdk_tracer):
        self._sdk_tracer = sdk_tracer
        self.sampler = sdk_tracer.sampler
        self.id_generator = sdk_tracer.id_generator
        self.span_processor = sdk_tracer.span_processor
        self.resource = sdk_tracer.resource
        self.instrumentation_scope = sdk_tracer._instrumentation_scope
        self.limits = sdk_tracer._span_limits

    def start_span(self, name, context=None, kind=trace.SpanKind.INTERNAL, attributes=None, links=(),
                   start_time=None, record_exception=True, set_status_on_exception=True):
        parent = trace.get_current_span(context).get_span_context()
        if not self._sdk_tracer._is_enabled():
            return trace.NonRecordingSpan(parent)
        if parent.is_valid:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            parent = None
            trace_id, random_id = self.id_generator.generate_trace_id(), self.id_generator.is_trace_id_random()
        result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        return self._begin(name, context, parent, kind, trace_id, random_id, result.decision, result.trace_state,
                           result.attributes, links, start_time, record_exception, set_status_on_exception)

    def start_new_trace(self, name, context, kind, trace_id: int, attributes=None, sampling=None):
        """The span beginning a new trace of `trace_id`, which the caller decided to sample
        (tracing.span_if_sampled): the sampler is not asked again. `sampling`, the
        sampler's result where the caller asked it, gives its decision, attributes and
        trace state."""
        if not self._sdk_tracer._is_enabled():
            return trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        decision, trace_state = Decision.RECORD_AND_SAMPLE, None
        if sampling is not None:
            decision, trace_state = sampling.decision, sampling.trace_state
            attributes = {**(attributes or {}), **sampling.attributes}
        return self._begin(name, context, None, kind, trace_id, self.id_generator.is_trace_id_random(), decision,
                           trace_state, attributes, (), None, True, True)

    def _begin(self, name, context, parent, kind, trace_id: int, random_id: bool, decision, trace_state, attributes,
               links, start_time, record_exception, set_status_on_exception):
        """The span of a decided trace: a LightSpan if the decision records it, a
        non-recording span otherwise, with the flags the SDK gives it."""
        if decision is _RECORD_AND_SAMPLE:
            flags = _SAMPLED_RANDOM if random_id else _SAMPLED
        else:
            flags = _DEFAULT_RANDOM if random_id else _DEFAULT
        span_context = local_span_context(trace_id, self.id_generator.generate_span_id(), flags, trace_state)
        if decision is _DROP:
            return trace.NonRecordingSpan(span_context)
        span = LightSpan(self, name, span_context, parent, kind, attributes, links, record_exception,
                         set_status_on_exception, start_time)
        self.span_processor.on_start(span, parent_context=context)
        return span

    @contextlib.contextmanager
    def start_as_current_span(self, name, context=None, kind=trace.SpanKind.INTERNAL, attributes=None, links=(),
                              start_time=None, record_exception=True, set_status_on_exception=True,
                              end_on_exit=True):
        span = self.start_span(name, context, kind, attributes, links, start_time, record_exception,
                               set_status_on_exception)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as span:
            yield span


class LightSpan(trace.Span):
    """A recording span, readable by the span processors and exporters as the SDK's
    ReadableSpan is (name, context, parent, kind, times, attributes, events, links,
    status, resource, instrumentation scope, dropped counts). Its attributes follow the
    SDK's limits: at most max_span_attributes (the oldest dropped first), strings cut to
    max_span_attribute_length. Not locked: a span belongs to the request or task that
    made it."""

    __slots__ = ("_limits", "_processor", "_record_exception", "_set_status_on_exception", "attributes",
                 "context", "dropped_attributes", "dropped_events", "dropped_links", "end_time", "events",
                 "instrumentation_scope", "kind", "links", "name", "parent", "resource", "start_time", "status")

    def __init__(self, tracer: LightTracer, name, context, parent, kind, attributes, links, record_exception,
                 set_status_on_exception, start_time=None):
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.resource = tracer.resource
        self.instrumentation_scope = tracer.instrumentation_scope
        self._processor = tracer.span_processor
        self._limits = tracer.limits
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self.status = _UNSET
        self.attributes = {}
        # Most spans get neither events nor links: a list is made for the first one.
        self.events = ()
        self.dropped_attributes = self.dropped_events = self.dropped_links = 0
        self.links = self._valid_links(links)
        self.end_time = None
        if attributes:
            self._set(attributes)
        self.start_time = start_time if start_time is not None else time_ns()

    def _valid_links(self, links) -> list | tuple:
        if not links:
            return ()
        limits = self._limits
        kept = []
        for link in links:
            if not link or not (link.context.is_valid or link.attributes or link.context.trace_state):
                continue
            if link.attributes:
                link = trace.Link(link.context, BoundedAttributes(limits.max_link_attributes, link.attributes,
                                                                  max_value_len=limits.max_attribute_length))
            kept.append(link)
        if limits.max_links is not None and len(kept) > limits.max_links:
            # As the SDK's bounded list: the last ones are kept.
            self.dropped_links = len(kept) - limits.max_links
            kept = kept[self.dropped_links:]
        return kept

    def _set(self, attributes):
        limits = self._limits
        most = limits.max_span_attributes
        max_length = limits.max_span_attribute_length
        kept = self.attributes
        # Most calls: new keys, all strings, plain values, no length limit and room for all,
        # so the loop below would keep each as it is.
        if (max_length is None and _KEY_TYPES.issuperset(map(type, attributes)) and "" not in attributes
                and _PLAIN_TYPES.issuperset(map(type, attributes.values())) and kept.keys().isdisjoint(attributes)
                and (most is None or len(kept) + len(attributes) <= most)):
            kept.update(attributes)
            return
        for key, value in attributes.items():
            if not key or type(key) is not str:
                log.warning("invalid key `%s`. must be non-empty string. Dropping key from attributes.", key)
                self.dropped_attributes += 1
                continue
            if type(value) not in _PLAIN_TYPES or max_length is not None:
                value = _clean_attribute_value(value, max_length)
            if key in kept:
                del kept[key]
            elif most is not None and len(kept) >= most:
                if most == 0:
                    self.dropped_attributes += 1
                    continue
                del kept[next(iter(kept))]
                self.dropped_attributes += 1
            kept[key] = value

    def _ended(self, what: str) -> bool:
        if self.end_time is not None:
            log.warning("Tried calling %s on an ended span.", what)
            return True
        return False

    def get_span_context(self) -> trace.SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes) -> None:
        if not self._ended("set_attributes"):
            self._set(attributes)

    def set_attribute(self, key, value) -> None:
        if not self._ended("set_attribute"):
            self._set({key: value})

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self.name = name

    def add_event(self, name: str, attributes=None, timestamp=None) -> None:
        if self._ended("add_event"):
            return
        limits = self._limits
        if not self.events:
            self.events = []
        if limits.max_events is not None and len(self.events) >= limits.max_events:
            # As the SDK's bounded list: the oldest event makes way.
            del self.events[0]
            self.dropped_events += 1
        self.events.append(Event(name, BoundedAttributes(limits.max_event_attributes, attributes,
                                                         max_value_len=limits.max_attribute_length),
                                 timestamp))

    def add_link(self, context, attributes=None) -> None:
        if self._ended("add_link"):
            return
        for link in self._valid_links([trace.Link(context, attributes)]):
            if not self.links:
                self.links = []
            if self._limits.max_links is not None and len(self.links) >= self._limits.max_links:
                del self.links[0]
                self.dropped_links += 1
            self.links.append(link)

    def set_status(self, status, description=None) -> None:
        if self._ended("set_status"):
            return
        # As the SDK: an OK status is final, and UNSET is never set.
        if self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning("Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                            description)
            self.status = status
        elif status is not StatusCode.UNSET:
            self.status = Status(status, description)

    def record_exception(self, exception, attributes=None, timestamp=None, escaped=False) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time=None) -> None:
        if self._ended("end"):
            return
        self.end_time = end_time if end_time is not None else time_ns()
        self._processor._on_ending(self)
        self._processor.on_end(self)

    def __exit__(self, exc_type, exc_value, exc_traceback) -> None:
        if exc_value is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_value, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_value).__name__}: {exc_value}"))
        super().__exit__(exc_type, exc_value, exc_traceback)

    def __repr__(self) -> str:
        return f'LightSpan(name="{self.name}", context={self.context})'
