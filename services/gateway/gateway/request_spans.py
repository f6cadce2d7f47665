"""The gateway's server spans: a WSGI middleware that makes a span for each sampled request
only (docs/tracing.md, "What is sampled"); an unsampled request runs in its caller's context
and nothing more."""

from flask import has_request_context, request
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation import wsgi
from opentelemetry.trace import Status, StatusCode

from chinook import tracing

from .direct_rows import ROUTE_KEY

# A request's context when it carries none: extract() would make this anew each time.
NO_CONTEXT = context.Context()
SERVER_ERROR = Status(StatusCode.ERROR)


class RequestSpans:
    """WSGI middleware: a server span for each sampled request, continuing a caller's W3C
    trace context, with the request's method, scheme, target, client address, Flask route
    and status. A request not sampled runs in its context and nothing more, so that the
    calls it makes tell cache-svc not to sample either."""

    def __init__(self, wsgi_app, tracer):
        self.wsgi_app = wsgi_app
        self.tracer = tracer
        # The environ keys of the headers the configured propagators read: a request with
        # none of them (most requests) has no context to extract.
        self.context_keys = tuple("HTTP_" + field.upper().replace("-", "_")
                                  for field in propagate.get_global_textmap().fields)

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(tracing.UNTRACED_PATHS):
            return self.wsgi_app(environ, start_response)
        trace_id = None
        if environ.keys().isdisjoint(self.context_keys):
            # No caller's context: a new trace, and most of them are not sampled.
            incoming = NO_CONTEXT
            trace_id, request_context = tracing.unsampled_new_trace(self.tracer, NO_CONTEXT)
            if request_context is not None:
                token = context.attach(request_context)
                try:
                    return self.wsgi_app(environ, start_response)
                finally:
                    context.detach(token)
        else:
            incoming = propagate.extract(environ, getter=wsgi.wsgi_getter)
        method = environ.get("REQUEST_METHOD", "")
        span, request_context = tracing.span_if_sampled(self.tracer, method, trace.SpanKind.SERVER, incoming,
                                                        lambda: request_attributes(method, environ), trace_id)
        token = context.attach(request_context)
        try:
            if span is None:
                return self.wsgi_app(environ, start_response)
            return self._traced(span, method, environ, start_response)
        finally:
            context.detach(token)

    def _traced(self, span, method: str, environ, start_response):
        def recording_start_response(status, headers, *exc_info):
            response_attributes(span, method, status, environ)
            return start_response(status, headers, *exc_info)

        # The span is current already (request_context holds it): use_span would attach
        # it again.
        try:
            return self.wsgi_app(environ, recording_start_response)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()


def request_attributes(method: str, environ) -> dict:
    """The attributes a request is found by, no more: with the WSGI instrumentation's
    thirteen, making and exporting a span took twice as long."""
    return {"http.method": method, "http.scheme": environ.get("wsgi.url_scheme", ""),
            "http.target": environ.get("RAW_URI") or environ.get("PATH_INFO", ""),
            "net.peer.ip": environ.get("REMOTE_ADDR", "")}


def response_attributes(span, method: str, status: str, environ):
    """Gives a sampled request's span its status code and the route Flask matched (or
    direct_rows answered), when its response starts, in one call: Flask matched the route
    before any check ran, so refused requests have it too, and a request not sampled pays
    nothing (matching the URL again in the middleware cost as much as making the span; a
    hook before every request, a few µs of each). A 5xx, as the HTTP conventions have it,
    is an error."""
    code = int(status[:3])
    attributes = {"http.status_code": code}
    rule = environ.get(ROUTE_KEY)
    if rule is None and has_request_context():
        url_rule = request.url_rule
        rule = url_rule.rule if url_rule is not None else None
    if rule is not None:
        attributes["http.route"] = rule
        span.update_name(f"{method} {rule}")
    span.set_attributes(attributes)
    # As the instrumentations' http_status_to_status_code has it for a server span.
    if code < 100 or code >= 500:
        span.set_status(SERVER_ERROR)


def instrument(app):
    """A span for each sampled request of the app, continuing a caller's W3C trace context;
    nothing while tracing is off."""
    tracer = tracing.tracer(__name__)
    if tracer is not None:
        app.wsgi_app = RequestSpans(app.wsgi_app, tracer)
