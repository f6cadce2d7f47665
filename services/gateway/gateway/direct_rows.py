"""The two requests clients send most, a row's read (from this process' near cache or
through cache-svc) and a row's update, answered without Flask's per-request machinery:
its request and app contexts, routing, hooks and response objects took more than half of
an update's CPU and most of a near-cache read's in the running gateway (bench/README.md).

Only a request that is plainly one the Flask app would answer the same way is answered
here: GET or PATCH of /<collection>/<id> with an id of plain digits and no query string,
from a Host ALLOWED_HOSTS lists, with a token whose role the route needs, and for an
update neither Origin nor Sec-Fetch-Site (what browsers send) and a JSON object of at
most MAX_BODY_BYTES as its body. Every other request goes to the Flask app unchanged (a
body read here is handed on), which answers it, refusals and errors included, as it
answers every request; so does a failure of a read or an update sent to cache-svc.
tests/unit/test_direct_rows.py sends both the same requests and compares the answers.
"""

import io
import json
import re
import time

from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_host

from chinook.entities import ENTITIES, INT_MAX

from . import consistency
from .api import api
from .auth import RANK
from .browsers import JSON_MEDIA_TYPE
from .errors import ApiError
from .json_input import json_object
from .near_cache import NO_TOKEN
from .near_cache_protocol import accepted_body, read_headers, read_row, update_row
from .request_hooks import STARTED_KEY, http_timer

# Larger bodies (a patch of one row is far smaller) go to the Flask app.
MAX_BODY_BYTES = 64 * 1024
# Where the rule of a request answered here waits, in its environ, for its server span.
ROUTE_KEY = "chinook.route"
# A positive id without leading zeros, of at most as many digits as INT_MAX.
_ROW_PATH = re.compile(rf"/([a-z0-9_-]+)/([1-9][0-9]{{0,{len(str(INT_MAX)) - 1}}})")
# Headers a browser adds to a change; any of them sends the change to the app's checks.
_BROWSER_KEYS = ("HTTP_ORIGIN", "HTTP_SEC_FETCH_SITE")


class DirectRows:
    """WSGI middleware in front of the Flask app's own wsgi_app (`flask_app`'s routes,
    extensions and error handlers, made by create_app before this)."""

    def __init__(self, flask_app, wsgi_app):
        self.app = flask_app
        self.wsgi_app = wsgi_app
        extensions = flask_app.extensions
        self.near = extensions["near_cache"]
        self.reads, self.updates = extensions["read_batcher"], extensions["update_batcher"]
        self.access = extensions["access"]
        self.allowed_hosts = extensions["allowed_hosts"]
        self.token_max_age_s = extensions["token_max_age_s"]
        # (collection, method) -> (entity, rule, least role), only where the app's own map
        # sends the row's path to the entity's row route.
        self.routes = {}
        adapter = flask_app.url_map.bind("localhost")
        for entity in ENTITIES.values():
            for method, view in (("GET", "get"), ("PATCH", "patch")):
                endpoint = f"{api.name}.{view}_{entity.name}"
                try:
                    rule, _ = adapter.match(f"/{entity.collection}/1", method, return_rule=True)
                except HTTPException:  # no such route, or not with this method
                    continue
                if rule.endpoint == endpoint:
                    role = flask_app.view_functions[endpoint].required_role
                    self.routes[entity.collection, method] = (entity, rule.rule, RANK[role])

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD")
        if method != "GET" and method != "PATCH":
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        match = _ROW_PATH.fullmatch(environ.get("PATH_INFO", ""))
        route = match and self.routes.get((match[1], method))
        if route is None or (row_id := int(match[2])) > INT_MAX or environ.get("QUERY_STRING") \
                or environ.get("SCRIPT_NAME") or not self._allowed(environ, route[2]):
            return self.wsgi_app(environ, start_response)
        token = self._token(environ)
        if token is None:
            return self.wsgi_app(environ, start_response)
        entity, rule, _ = route
        if method == "GET":
            return self._read(environ, start_response, entity, rule, row_id, token, started)
        return self._update(environ, start_response, entity, rule, row_id, token, started)

    def _allowed(self, environ, least_rank: int) -> bool:
        # The host as the app reads it (a scheme's default port dropped).
        if not self.allowed_hosts.allows(get_host(environ)):
            return False
        caller = self.access.caller_of(environ.get("HTTP_AUTHORIZATION"))
        return caller is not None and RANK[caller.role] >= least_rank

    @staticmethod
    def _token(environ) -> int | None:
        """The version of the token the request presents, NO_TOKEN if none; None for a
        malformed one (the app answers it)."""
        try:
            return consistency.presented(environ)
        except ApiError:
            return None

    def _read(self, environ, start_response, entity, rule: str, row_id: int, token: int, started: float):
        environ[ROUTE_KEY] = rule
        try:
            row = read_row(self.near, self.reads, entity.name, row_id, token)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            return self._failed(environ, start_response, exc, b"", started)
        headers = read_headers(row)
        if token != NO_TOKEN:
            headers += consistency.token_headers(max(token, row.version), self.token_max_age_s)
        return self._respond(start_response, "200 OK", headers, row.body, "GET", rule, started)

    def _update(self, environ, start_response, entity, rule: str, row_id: int, token: int, started: float):
        media_type = environ.get("CONTENT_TYPE", "").lower()
        length = environ.get("CONTENT_LENGTH", "")
        if (media_type != JSON_MEDIA_TYPE and not media_type.startswith(JSON_MEDIA_TYPE + ";")) \
                or "HTTP_TRANSFER_ENCODING" in environ or not environ.keys().isdisjoint(_BROWSER_KEYS) \
                or not (length.isascii() and length.isdigit()) or not 0 < (size := int(length)) <= MAX_BODY_BYTES:
            return self.wsgi_app(environ, start_response)
        data = environ["wsgi.input"].read(size)
        fields_json = _fields_json(data) if len(data) == size else None
        if fields_json is None:
            # The app reads the body as it came, and says what is wrong with it.
            environ["wsgi.input"] = io.BytesIO(data)
            return self.wsgi_app(environ, start_response)
        environ[ROUTE_KEY] = rule
        try:
            result = update_row(self.near, self.updates, entity.name, row_id, fields_json)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            return self._failed(environ, start_response, exc, data, started)
        headers = consistency.token_headers(max(token, result.version), self.token_max_age_s)
        return self._respond(start_response, "202 ACCEPTED", headers, accepted_body(entity.primary_key, result).encode(),
                             "PATCH", rule, started)

    @staticmethod
    def _respond(start_response, status: str, headers: list, body: bytes, method: str, rule: str, started: float):
        start_response(status, [("Content-Type", JSON_MEDIA_TYPE), ("Content-Length", str(len(body))), *headers])
        http_timer(method, rule, int(status[:3])).observe(time.perf_counter() - started)
        return [body]

    def _failed(self, environ, start_response, exc: Exception, data: bytes, started: float):
        """A failure of a read or an update sent to cache-svc: answered by the app's error
        handlers in a request context of its own, its duration observed by the app's hook."""
        environ["wsgi.input"] = io.BytesIO(data)
        environ[STARTED_KEY] = started
        app = self.app
        with app.request_context(environ):
            try:
                response = app.make_response(app.handle_user_exception(exc))
            except Exception as unhandled:  # noqa: BLE001 - Flask's answer to what no handler takes: a 500
                response = app.make_response(app.handle_exception(unhandled))
            response = app.process_response(response)
        return response(environ, start_response)


def _fields_json(data: bytes) -> str | None:
    """The body's columns as the views pass them on, None for a body the app refuses."""
    try:
        return json.dumps(json_object(data))
    except ApiError:
        return None
