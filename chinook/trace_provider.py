"""The tracer provider chinook.tracing runs on: the configured sampler, except that flushes
of sampled writes are always sampled, tracers that make light spans, and a resource hashed
once."""

from opentelemetry import trace

# The part of a trace id the SDK's ratio sampler decides on.
TRACE_ID_LOW_BITS = (1 << 64) - 1


def new_provider(sampler, resource=None):
    """The tracer provider tracing runs on: `sampler` (the configured one), except that
    flushes of sampled writes are always sampled, and tracers that make light spans
    (chinook.light_spans)."""
    from .light_spans import LightSpansProvider

    return LightSpansProvider(resource=resource, sampler=_linked_roots_sampled(sampler))


def hashed_once(resource):
    """The resource, its hash computed once: the OTLP exporter groups each batch's spans by
    resource, and the SDK's Resource hashes its attributes as JSON on every call, a quarter
    of the time encoding a span took (41 -> 30 µs a span, measured alone)."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        def __init__(self, attributes, schema_url):
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self):
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


def _linked_roots_sampled(configured):
    """The configured sampler, except that a span starting a trace with links to sampled
    spans is sampled: a flush of sampled writes links to them even where the sampler would
    have left its trace out."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class LinkedRootsSampled(Sampler):
        # How the configured sampler decides a new trace with no links, from its id alone
        # (_new_trace_bound), where that is known.
        new_trace_bound = _new_trace_bound(configured)

        def samples_new_trace(self, trace_id: int) -> bool | None:
            """Whether the configured sampler samples a new trace of this id, with no links,
            decided from the id alone; None where that is not known (ask should_sample)."""
            bound = self.new_trace_bound
            return None if bound is None else trace_id & TRACE_ID_LOW_BITS < bound

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            if links and not trace.get_current_span(parent_context).get_span_context().is_valid \
                    and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self):
            return f"LinkedRootsSampled{{{configured.get_description()}}}"

    return LinkedRootsSampled()


def _new_trace_bound(sampler) -> int | None:
    """For the samplers OTEL_TRACES_SAMPLER names (always_on, always_off, traceidratio and
    their parentbased_ forms), the bound under which a new trace's id, its lower 64 bits,
    is sampled: what their should_sample decides for a trace with no parent, which cost a
    request not sampled more than the rest of its path. None for any other sampler, which
    is asked."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

    if isinstance(sampler, ParentBased):
        # A trace with no parent is decided by the root sampler alone.
        sampler = sampler._root
    if sampler is ALWAYS_ON:
        return TRACE_ID_LOW_BITS + 1
    if sampler is ALWAYS_OFF:
        return 0
    if type(sampler) is TraceIdRatioBased:
        return sampler.bound
    return None
