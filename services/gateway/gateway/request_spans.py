"""The gateway's server spans: a WSGI middleware that makes a span for each sampled request
only (docs/tracing.md, "What is sampled"); an unsampled request runs in its caller's context
and nothing more."""

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation import wsgi
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from chinook import tracing


class RequestSpans:
    """WSGI middleware: a server span for each sampled request, continuing a caller's W3C
    trace context, with the request's method, scheme, target, client address, Flask route
    and status. A request not sampled runs in its context and nothing more, so that the
    calls it makes tell cache-svc not to sample either."""

    def __init__(self, wsgi_app, url_map, tracer):
        self.wsgi_app = wsgi_app
        self.url_map = url_map
        self.tracer = tracer

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(tracing.UNTRACED_PATHS):
            return self.wsgi_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        span, request_context = tracing.span_if_sampled(self.tracer, method, trace.SpanKind.SERVER,
                                                 propagate.extract(environ, getter=wsgi.wsgi_getter))
        token = context.attach(request_context)
        try:
            if span is None:
                return self.wsgi_app(environ, start_response)
            return self._traced(span, method, environ, start_response)
        finally:
            context.detach(token)

    def _traced(self, span, method: str, environ, start_response):
        # The attributes a request is found by, no more: with the WSGI instrumentation's
        # thirteen, making and exporting a span took twice as long.
        span.set_attributes({"http.method": method, "http.scheme": environ.get("wsgi.url_scheme", ""),
                             "http.target": environ.get("RAW_URI") or environ.get("PATH_INFO", ""),
                             "net.peer.ip": environ.get("REMOTE_ADDR", "")})
        route = self._route(environ)
        if route:
            span.set_attribute("http.route", route)
            span.update_name(f"{method} {route}")

        def recording_start_response(status, headers, *exc_info):
            wsgi.add_response_attributes(span, status, headers)
            return start_response(status, headers, *exc_info)

        with trace.use_span(span, end_on_exit=True):
            return self.wsgi_app(environ, recording_start_response)

    def _route(self, environ) -> str | None:
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
        except (HTTPException, RequestRedirect):
            return None
        return rule.rule


def instrument(app):
    """A span for each sampled request of the app, continuing a caller's W3C trace context;
    nothing while tracing is off."""
    tracer = tracing.tracer(__name__)
    if tracer is not None:
        app.wsgi_app = RequestSpans(app.wsgi_app, app.url_map, tracer)
