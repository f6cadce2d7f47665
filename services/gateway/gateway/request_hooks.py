"""What runs before and after every route: the checks of where a request comes from, who
sends it and what it carries (each refusal logged), the role each route needs, and the
request's duration in the metrics."""

import functools
import logging
import re
import time

from flask import current_app, g, request

from chinook import metrics

from . import browsers, errors
from .auth import RANK
from .extensions import limited_log

# The methods of HTTP the metrics name; any other is counted as "other", so that made-up
# ones add no series.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

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


def check_browsers():
    """Answers 400 to a Host that ALLOWED_HOSTS does not list, and 403 to a change of
    state sent by another site's page (browsers.py)."""
    refusal = browsers.refusal(request, current_app.view_functions.get(request.endpoint),
                               current_app.extensions["allowed_hosts"])
    return refused(*refusal) if refusal else None


def check_access():
    """Answers 401 or 403 before the route runs, unless the caller's role suffices."""
    view = current_app.view_functions.get(request.endpoint)
    # An unknown route needs nothing: it answers 404. A route without a mark needs the most.
    required = getattr(view, "required_role", "admin") if view else "none"
    if required == "none":
        return None
    authorization = request.headers.get("Authorization")
    caller = current_app.extensions["access"].caller_of(authorization)
    challenge = {"WWW-Authenticate": "Bearer"}
    if caller is None:
        return refused(401, "unauthenticated", "the bearer token is not valid", challenge)
    role = caller.role
    if RANK[role] >= RANK[required]:
        if required == "admin":
            # Admin actions flush, duplicate and discard accepted writes: who did it must be findable.
            audit.info("%s %r by %s (%s)", request.method, request.path, caller.name, role)
        return None
    if not authorization:
        return refused(401, "unauthenticated", f"{request.method} {route_label(request.url_rule.rule)} needs a "
                       f"bearer token (Authorization: Bearer <token>) of role {required}", challenge)
    return refused(403, "permission_denied",
                   f"{request.method} {route_label(request.url_rule.rule)} needs role {required}; "
                   f"the token's role is {role}")


def check_media_type():
    """Answers 415 to a change whose body is not JSON, before anything reads it."""
    message = browsers.media_type_refusal(request, current_app.view_functions.get(request.endpoint))
    return errors.error_response(415, "unsupported_media_type", message) if message else None


def start_timer():
    g.started = time.perf_counter()


def observe(response):
    route = route_label(request.url_rule.rule) if request.url_rule else "unmatched"
    method = request.method if request.method in METRIC_METHODS else "other"
    metrics.HTTP_SECONDS.labels(method, route, response.status_code).observe(
        time.perf_counter() - g.get("started", time.perf_counter())
    )
    return response


def install(app):
    app.before_request(start_timer)
    # In this order: where a request comes from, who sends it, then what it carries.
    app.before_request(check_browsers)
    app.before_request(check_access)
    app.before_request(check_media_type)
    app.after_request(observe)
