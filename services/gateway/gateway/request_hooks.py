"""What runs before and after every route: the checks of where a request comes from, who
sends it and what it carries (each refusal logged), the role each route needs, and the
request's duration in the metrics."""

import functools
import logging
import re
import time

from flask import current_app, request

from chinook import metrics

from . import browsers, errors
from .auth import RANK
from .extensions import limited_log

# The methods of HTTP the metrics name; any other is counted as "other", so that made-up
# ones add no series.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Where a request's start time waits, in its WSGI environ, for its duration to be observed.
STARTED_KEY = "chinook.started"

audit = logging.getLogger("gateway.audit")


def requires(role: str):
    """The least role a route needs ("none": open to anyone)."""
    def mark(view):
        view.required_role = role
        return view
    return mark


@functools.cache
def route_label(rule: str) -> str:
    """The rule as the metrics name it, without converters: /albums/<album_id>."""
    return re.sub(r"<(?:[^<>]*:)?(\w+)>", r"<\1>", rule)


def refused(status: int, code: str, message: str, headers=None):
    """The error response of a refused request, logged (the message never holds a token;
    the path is quoted, so that a %0A in the URL cannot start a line of its own)."""
    limited_log().log(logging.WARNING, (request.remote_addr, status), "%d to %s %r from %s: %s",
                      status, request.method, request.path, request.remote_addr, message)
    return errors.error_response(status, code, message, headers)


def check_browsers(req, view, app):
    """Answers 400 to a Host that ALLOWED_HOSTS does not list, and 403 to a change of
    state sent by another site's page (browsers.py)."""
    refusal = browsers.refusal(req, view, app.extensions["allowed_hosts"])
    return refused(*refusal) if refusal else None


def check_access(req, view, app):
    """Answers 401 or 403 before the route runs, unless the caller's role suffices."""
    # An unknown route needs nothing: it answers 404. A route without a mark needs the most.
    required = getattr(view, "required_role", "admin") if view else "none"
    if required == "none":
        return None
    authorization = req.headers.get("Authorization")
    caller = app.extensions["access"].caller_of(authorization)
    challenge = {"WWW-Authenticate": "Bearer"}
    if caller is None:
        return refused(401, "unauthenticated", "the bearer token is not valid", challenge)
    role = caller.role
    if RANK[role] >= RANK[required]:
        if required == "admin":
            # Admin actions flush, duplicate and discard accepted writes: who did it must be findable.
            audit.info("%s %r by %s (%s)", req.method, req.path, caller.name, role)
        return None
    if not authorization:
        return refused(401, "unauthenticated", f"{req.method} {route_label(req.url_rule.rule)} needs a "
                       f"bearer token (Authorization: Bearer <token>) of role {required}", challenge)
    return refused(403, "permission_denied",
                   f"{req.method} {route_label(req.url_rule.rule)} needs role {required}; "
                   f"the token's role is {role}")


def check_media_type(req, view):
    """Answers 415 to a change whose body is not JSON, before anything reads it."""
    message = browsers.media_type_refusal(req, view)
    return errors.error_response(415, "unsupported_media_type", message) if message else None


def check_request():
    """Before every route, in this order: where the request comes from, who sends it, then
    what it carries; the first refusal is the answer. One hook reaching the request and the
    app once: as four, Flask's calls and the context look-ups were a fifth of a read's time."""
    req = request._get_current_object()
    req.environ[STARTED_KEY] = time.perf_counter()
    app = current_app._get_current_object()
    view = app.view_functions.get(req.endpoint)
    return check_browsers(req, view, app) or check_access(req, view, app) or check_media_type(req, view)


@functools.cache
def http_timer(method: str, rule: str | None, status: int):
    """The request-duration series of a method (one of METRIC_METHODS or "other"), rule and
    status: made once, as labels() looks each one up anew. Bounded, the cache as the series:
    callers pass no method of the client's own making, and rules are the app's."""
    return metrics.HTTP_SECONDS.labels(method, route_label(rule) if rule else "unmatched", status)


def observe(response):
    req = request._get_current_object()
    now = time.perf_counter()
    rule = req.url_rule
    method = req.method if req.method in METRIC_METHODS else "other"
    http_timer(method, rule.rule if rule else None, response.status_code).observe(
        now - req.environ.get(STARTED_KEY, now))
    return response


def install(app):
    app.before_request(check_request)
    app.after_request(observe)
