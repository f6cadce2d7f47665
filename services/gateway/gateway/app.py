"""Flask routes: parse HTTP input, call the cache service, shape JSON out."""

import functools
import json
import logging
import os
import re
import time
from pathlib import Path

import grpc
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from werkzeug.routing import BaseConverter

from chinook import metrics, tracing
from chinook.cache.v1 import cache_pb2
from chinook.config import Settings
from chinook.entities import MIN_MULTIPLIER, ValidationError, get_entity, parse_id, parse_multiplier
from chinook.grpc_client import CacheClient, from_struct
from chinook.rate_limited_log import RateLimitedLog
from chinook.tls import channel_credentials

from . import IDENTITY, browsers, consistency, errors, openapi
from .auth import RANK, Access
from .batching import CallBatcher
from .browsers import AllowedHosts, changes_state
from .errors import STATUS_BY_NUMBER, ApiError, CallFailed
from .json_input import json_body
from .near_cache import NO_TOKEN, PENDING, ChangeWatcher, NearCache

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_FLUSH_WAIT_S = 300

# The write-back console: a static page and its files, served as they are (no build step).
CONSOLE_DIR = Path(__file__).with_name("console")
CONSOLE_ASSETS = {"console.js": "text/javascript", "console.css": "text/css", "icon.svg": "image/svg+xml"}
# The page loads its own files and calls this gateway, nothing else.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONSOLE_HEADERS = {"Content-Security-Policy": CONSOLE_POLICY, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer"}
CONSOLE_ASSET_MAX_AGE_S = 300

# The methods of HTTP the metrics name; any other is counted as "other", so that made-up
# ones add no series.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Refusals (401, 403, a Host not allowed) and readiness failures: a log line per client
# address and status (or per problem) and window.
REFUSAL_LOG_WINDOW_S = 10

audit = logging.getLogger("gateway.audit")
log = logging.getLogger(__name__)

api = Blueprint("api", __name__)
# The original demo's routes, with their original shapes; LEGACY_ROUTES=false leaves them out.
legacy = Blueprint("legacy", __name__)


class SegmentConverter(BaseConverter):
    """A path segment other than the names given: the routes beside a variable one
    (/albums/bulk beside /albums/<album_id>) then answer 405 to the other methods, as
    the contract has it (a concrete path before a templated one), rather than taking
    their name for an id."""

    def __init__(self, url_map, *reserved: str):
        super().__init__(url_map)
        self.regex = f"(?!(?:{'|'.join(map(re.escape, reserved))})$)[^/]+"


def requires(role: str):
    """The least role a route needs ("none": open to anyone)."""
    def mark(view):
        view.required_role = role
        return view
    return mark


def cache() -> CacheClient:
    return current_app.extensions["cache_client"]


def near_cache() -> NearCache:
    return current_app.extensions["near_cache"]


def updates() -> CallBatcher:
    return current_app.extensions["update_batcher"]


def reads() -> CallBatcher:
    return current_app.extensions["read_batcher"]


def bad_request(message: str):
    return ApiError(400, "invalid_argument", message)


def path_id(raw: str, name: str) -> int:
    try:
        return parse_id(raw, name)
    except ValidationError as exc:
        raise bad_request(str(exc)) from None


WRITE_BACK_HEADER = {
    cache_pb2.WRITE_BACK_STATE_CLEAN: "clean",
    cache_pb2.WRITE_BACK_STATE_PENDING: "pending",
    cache_pb2.WRITE_BACK_STATE_DEAD_LETTERED: "dead-letter",
}


def answer_token(response: Response, token: int, version: int) -> Response:
    """The response, giving the client the newest of its token and `version` as its token."""
    return consistency.answer(response, max(token, version), current_app.extensions["token_max_age_s"])


def read_row(entity_name: str, row_id: int, token: int = NO_TOKEN) -> tuple[bytes, str, str, int]:
    """The row's JSON body, the tier it came from (near, redis or postgres), its
    write-back state and version: from the near cache (for a read presenting a token,
    where NearCache.get allows it), or through cache-svc, keeping it there."""
    key = (entity_name, row_id)
    near = near_cache()
    entry = near.get(key, token)
    if entry is not None:
        return entry.body, "near", entry.state, entry.version
    reservation = near.reserve(key)
    result = reads().submit(cache_pb2.RowKey(entity=entity_name, id=row_id))
    if result.code:
        raise CallFailed(STATUS_BY_NUMBER[result.code], result.message)
    body, state = result.row_json.encode(), WRITE_BACK_HEADER[result.write_back]
    near.fill(key, reservation, result.version, state, body)
    return body, "redis" if result.cache_hit else "postgres", state, result.version


def update_row(entity_name: str, row_id: int):
    entity = get_entity(entity_name)
    token = consistency.presented(request)
    fields_json = json.dumps(json_body())
    key = (entity.name, row_id)
    reservation = near_cache().reserve(key)
    patch = cache_pb2.RowPatch(entity=entity.name, id=row_id, fields_json=fields_json)
    # Several requests' updates may travel in one call: each carries its own trace context.
    tracing.inject(patch.trace_context)
    result = updates().submit(patch)
    if result.code:
        raise CallFailed(STATUS_BY_NUMBER[result.code], result.message)
    # Before the response: a client reading through this process sees its own write
    # (here, or through cache-svc where the row is not whole in the cache yet), even
    # where a read of the row in flight has taken the reservation over.
    near_cache().written(entity.name, [row_id], result.version)
    if result.row_json:
        near_cache().fill(key, reservation, result.version, PENDING, result.row_json.encode())
    response = jsonify({entity.primary_key: result.id, "version": result.version, "write_back": "pending"})
    response.status_code = 202
    return answer_token(response, token, result.version)


@api.get("/albums/<segment('bulk', 'bulk-random'):album_id>")
@requires("reader")
def get_album(album_id):
    return _get("album", album_id)


@api.get("/artists/<artist_id>")
@requires("reader")
def get_artist(artist_id):
    return _get("artist", artist_id)


def _get(entity_name, raw_id):
    entity = get_entity(entity_name)
    row_id = path_id(raw_id, entity.primary_key)
    token = consistency.presented(request)
    body, tier, state, version = read_row(entity.name, row_id, token)
    response = Response(body, mimetype="application/json", headers={
        "X-Cache": "MISS" if tier == "postgres" else "HIT", "X-Cache-Tier": tier, "X-Write-Back": state,
    })
    return response if token == NO_TOKEN else answer_token(response, token, version)


def bulk_written(entity_name: str, ids, token: int, accepted) -> Response:
    """The 202 of a bulk that wrote `ids` (every row of the entity when None): its rows
    leave this process' near cache first, so that the client reads its writes here."""
    near_cache().written(entity_name, ids, accepted.max_version)
    response = jsonify({"accepted": accepted.accepted})
    response.status_code = 202
    return answer_token(response, token, accepted.max_version)


@api.patch("/albums/<segment('bulk', 'bulk-random'):album_id>")
@requires("writer")
def patch_album(album_id):
    return update_row("album", path_id(album_id, "album_id"))


@api.patch("/artists/<artist_id>")
@requires("writer")
def patch_artist(artist_id):
    return update_row("artist", path_id(artist_id, "artist_id"))


@api.post("/albums/bulk")
@requires("writer")
def bulk_update_albums():
    token = consistency.presented(request)
    body = json_body()
    extra = sorted(set(body) - {"updates"})
    if extra:
        raise bad_request(f"{extra[0]}: unknown field; expected only 'updates'")
    # cache-svc checks the list and every item, with its index in the message.
    updates = body.get("updates")
    accepted = cache().bulk_update("album", updates)
    return bulk_written("album", [parse_id(update["album_id"]) for update in updates], token, accepted)


@api.post("/albums/bulk-random")
@requires("admin")
def bulk_random_albums():
    token = consistency.presented(request)
    # Every album gets a title: every one this process holds leaves.
    return bulk_written("album", None, token, cache().randomize_album_titles(include_rows=False))


@api.post("/tasks/duplicate")
@requires("admin")
def start_duplication():
    body = json_body() if request.get_data() else {}
    extra = sorted(set(body) - {"multiplier"})
    if extra:
        raise bad_request(f"{extra[0]}: unknown field; expected only 'multiplier'")
    try:
        multiplier = parse_multiplier(body.get("multiplier", MIN_MULTIPLIER))
    except ValidationError as exc:
        raise bad_request(str(exc)) from None
    return jsonify({"task_id": cache().start_duplication(multiplier)}), 202


def task_body(task_id: str) -> dict:
    status = cache().get_task(task_id)
    return {
        "task_id": status.task_id,
        "state": status.state,
        "progress": {"done": status.done, "total": status.total},
        "result": from_struct(status.result) if status.state == "SUCCESS" else None,
        "error": status.error or None,
    }


@api.get("/tasks/<segment('duplicate'):task_id>")
@requires("reader")
def get_task(task_id):
    return jsonify(task_body(task_id))


def status_body(status) -> dict:
    return {
        "pending": status.pending,
        "oldest_pending_age_s": status.oldest_pending_age_s,
        "accepted_total": status.accepted_total,
        "flushed_total": status.flushed_total,
        "failed": status.failed,
    }


@api.get("/write-back/status")
@requires("reader")
def write_back_status():
    return jsonify(status_body(cache().write_back_status()))


@api.post("/write-back/flush")
@requires("admin")
def write_back_flush():
    raw = request.args.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise bad_request(f"wait: must be a number of seconds, got {raw!r}") from None
    if not 0 <= wait <= MAX_FLUSH_WAIT_S:
        raise bad_request(f"wait: must be 0-{MAX_FLUSH_WAIT_S} seconds, got {raw}")
    return jsonify(status_body(cache().flush(wait))), 202 if wait == 0 else 200


def row_inspection_body(inspection) -> dict:
    cached, stored = inspection.cache, inspection.postgres
    present = cached.state != cache_pb2.CACHED_ROW_STATE_ABSENT
    return {
        "entity": inspection.entity,
        "id": inspection.id,
        "cache": {
            "present": present,
            "value": json.loads(cached.row_json) if present else None,
            "version": cached.version if present else None,
            # The enum's names, lower-cased, are the API's states (cache-svc maps them back).
            "state": cache_pb2.CachedRowState.Name(cached.state).removeprefix("CACHED_ROW_STATE_").lower(),
            "since": cached.since if cached.HasField("since") else None,
            "partial": cached.partial,
        },
        "postgres": {
            "present": stored.present,
            "value": json.loads(stored.row_json) if stored.present else None,
            "wb_version": stored.wb_version if stored.present else None,
        },
        "agree": inspection.agree,
    }


@api.get("/write-back/rows/<entity>/<row_id>")
@requires("reader")
def inspect_row(entity, row_id):
    try:
        entity = get_entity(entity)
    except ValidationError as exc:
        raise bad_request(str(exc)) from None
    return jsonify(row_inspection_body(cache().inspect_row(entity.name, path_id(row_id, entity.primary_key))))


def dead_letter_body(entry) -> dict:
    return {
        "key": f"{entry.entity}:{entry.id}",
        "entity": entry.entity,
        "id": entry.id,
        "version": entry.version,
        "error": entry.error,
        "failed_at": entry.failed_at,
        "value": from_struct(entry.fields) if entry.HasField("fields") else None,
    }


def dead_letter_key(key: str) -> tuple[str, int]:
    entity_name, _, raw_id = key.partition(":")
    try:
        return get_entity(entity_name).name, parse_id(raw_id, "id")
    except ValidationError as exc:
        raise bad_request(f"dead letter key {key!r}: expected <entity>:<id>, e.g. album:42; {exc}") from None


@api.get("/write-back/dead-letters")
@requires("reader")
def list_dead_letters():
    response = cache().list_dead_letters(1000)
    return jsonify({"dead_letters": [dead_letter_body(e) for e in response.entries], "total": response.total})


@api.post("/write-back/dead-letters/<key>/retry")
@requires("admin")
def retry_dead_letter(key):
    entry = cache().retry_dead_letter(*dead_letter_key(key))
    return jsonify({**dead_letter_body(entry), "write_back": "pending"}), 202


@api.delete("/write-back/dead-letters/<key>")
@requires("admin")
def discard_dead_letter(key):
    entry = cache().discard_dead_letter(*dead_letter_key(key))
    return jsonify({**dead_letter_body(entry), "discarded": True})


@api.get("/metrics")
@requires("none")
def prometheus_metrics():
    registry = metrics.multiprocess_registry() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@api.get("/openapi.json")
@requires("none")
def openapi_document():
    return jsonify(current_app.extensions["openapi"])


@api.get("/docs")
@requires("none")
def docs():
    return Response(openapi.DOCS_PAGE, mimetype="text/html")


@api.get("/docs/<asset>")
@requires("none")
def docs_asset(asset):
    if asset not in openapi.DOCS_ASSETS:
        raise ApiError(404, "not_found", f"docs/{asset}: no such file; the page loads {', '.join(openapi.DOCS_ASSETS)}")
    return send_from_directory(openapi.SWAGGER_UI_DIR, asset, mimetype=openapi.DOCS_ASSETS[asset])


@api.get("/console")
@requires("none")
def console():
    # The page holds no data: every figure comes from the API, with the caller's token.
    response = send_from_directory(CONSOLE_DIR, "index.html", mimetype="text/html", max_age=0)
    response.headers.update(CONSOLE_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


@api.get("/console/<asset>")
@requires("none")
def console_asset(asset):
    if asset not in CONSOLE_ASSETS:
        raise ApiError(404, "not_found", f"console/{asset}: no such file; the page loads {', '.join(CONSOLE_ASSETS)}")
    response = send_from_directory(CONSOLE_DIR, asset, mimetype=CONSOLE_ASSETS[asset],
                                   max_age=CONSOLE_ASSET_MAX_AGE_S)
    response.headers.update(CONSOLE_HEADERS)
    return response


def limited_log() -> RateLimitedLog:
    return current_app.extensions["limited_log"]


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


@api.before_app_request
def start_timer():
    g.started = time.perf_counter()


@api.after_app_request
def observe(response):
    route = route_label(request.url_rule.rule) if request.url_rule else "unmatched"
    method = request.method if request.method in METRIC_METHODS else "other"
    metrics.HTTP_SECONDS.labels(method, route, response.status_code).observe(
        time.perf_counter() - g.get("started", time.perf_counter())
    )
    return response


@functools.cache
def route_label(rule: str) -> str:
    """The rule as the metrics name it, without converters: /albums/<album_id>."""
    return re.sub(r"<(?:[^<>]*:)?(\w+)>", r"<\1>", rule)


@api.get("/healthz")
@requires("none")
def healthz():
    return jsonify({"status": "ok"})


@api.get("/readyz")
@requires("none")
def readyz():
    try:
        problem = None if cache().is_serving() else "cache service is not serving"
    except grpc.RpcError as exc:
        problem = f"cache service unreachable: {exc.details()}"
    if problem is None:
        return jsonify({"status": "ready"})
    limited_log().log(logging.WARNING, ("readyz", problem), "not ready: %s", problem)
    # The details name internal addresses and TLS failures: for callers who may read data only.
    caller = current_app.extensions["access"].caller_of(request.headers.get("Authorization"))
    may_read = caller is not None and RANK[caller.role] >= RANK["reader"]
    return errors.error_response(503, "unavailable", problem if may_read else "not ready")


@legacy.get("/album")
@requires("reader")
def legacy_get_album():
    raw = request.args.get("album_id")
    if raw is None:
        raise bad_request("album_id: query parameter required, e.g. /album?album_id=193")
    row_id = path_id(raw, "album_id")
    token = consistency.presented(request)
    body, _, _, version = read_row("album", row_id, token)
    row = json.loads(body)
    response = jsonify({"album_id": row["album_id"], "title": row["title"]})
    return response if token == NO_TOKEN else answer_token(response, token, version)


@legacy.get("/update-album")
@requires("admin")
@changes_state
def legacy_update_all_albums():
    token = consistency.presented(request)
    accepted = cache().randomize_album_titles(include_rows=True)
    near_cache().written("album", None, accepted.max_version)
    return answer_token(jsonify([{"album_id": r.id, "version": r.version} for r in accepted.rows]), token,
                        accepted.max_version)


@legacy.get("/duplicate_database")
@requires("admin")
@changes_state
def legacy_duplicate():
    task_id = cache().start_duplication(2)
    return Response(f"Duplication task started (id.: {task_id})", mimetype="text/plain")


@legacy.get("/get_task_result")
@requires("reader")
def legacy_task_result():
    task_id = request.args.get("result_id")
    if not task_id:
        raise bad_request("result_id: query parameter required")
    task = task_body(task_id)
    if task["state"] == "SUCCESS":
        return jsonify({"ready": True, "successful": True, "value": task["result"]})
    if task["state"] in ("FAILURE", "REVOKED"):
        return jsonify({"status": "ERROR", "error_message": task["error"]})
    return jsonify({"status": "Pending"})


def create_app(settings: Settings, cache_client: CacheClient | None = None) -> Flask:
    """Builds the app; the cache client, the near cache and the thread that keeps it
    subscribed are created here, in the serving process."""
    app = Flask(__name__)
    # First: its span then covers the access check, refusals and audit lines included.
    tracing.instrument_flask(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    client = cache_client or CacheClient(settings.cache_svc_addr, settings.grpc_timeout_s,
                                         channel_credentials(settings, IDENTITY))
    app.extensions["cache_client"] = client
    near = app.extensions["near_cache"] = NearCache(settings.gateway_near_cache_rows)
    app.extensions["token_max_age_s"] = consistency.cookie_max_age_s(settings.near_cache_max_lag_ms)
    if settings.gateway_near_cache_rows:
        ChangeWatcher(client.watch_changes, near, settings.near_cache_max_lag_ms / 1000).start()
    linger_s = settings.gateway_batch_linger_ms / 1000
    app.extensions["update_batcher"] = CallBatcher(client.update_rows, linger_s)
    app.extensions["read_batcher"] = CallBatcher(client.get_rows, linger_s)
    access = app.extensions["access"] = Access.from_settings(settings)
    app.extensions["allowed_hosts"] = AllowedHosts.from_settings(settings, access.anonymous_role)
    app.extensions["limited_log"] = RateLimitedLog(log, REFUSAL_LOG_WINDOW_S)
    app.extensions["openapi"] = openapi.document(settings.legacy_routes, access.anonymous_role)
    # In this order: where a request comes from, who sends it, then what it carries.
    app.before_request(check_browsers)
    app.before_request(check_access)
    app.before_request(check_media_type)
    app.url_map.converters["segment"] = SegmentConverter
    app.register_blueprint(api)
    if settings.legacy_routes:
        app.register_blueprint(legacy)
    errors.register(app)
    return app
