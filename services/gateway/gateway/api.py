"""The HTTP API's blueprint: the routes of every entity of the registry (GET, PATCH and
bulk), the album demo's random titles, the duplication task, and the write-back state:
status, flush, a row's inspection, dead letters."""

import json
import re

from flask import Blueprint, Response, jsonify, request
from werkzeug.routing import BaseConverter

from chinook.cache.v1 import cache_pb2
from chinook.entities import (
    ENTITIES,
    MIN_MULTIPLIER,
    Entity,
    ValidationError,
    get_entity,
    parse_id,
    parse_multiplier,
)
from chinook.grpc_client import from_struct

from . import consistency
from .errors import bad_request
from .extensions import cache, near_cache, reads, updates
from .json_input import json_body
from .near_cache import NO_TOKEN
from .near_cache_protocol import accepted_body, answer_token, bulk_written, read_headers, read_row, update_row
from .request_hooks import requires

MAX_FLUSH_WAIT_S = 300
# The album demo's route beside the album routes: no album id can be its name.
RANDOM_TITLES = "bulk-random"

api = Blueprint("api", __name__)


class SegmentConverter(BaseConverter):
    """A path segment other than the names given: the routes beside a variable one
    (/albums/bulk beside /albums/<album_id>) then answer 405 to the other methods, as
    the contract has it (a concrete path before a templated one), rather than taking
    their name for an id."""

    def __init__(self, url_map, *reserved: str):
        super().__init__(url_map)
        self.regex = f"(?!(?:{'|'.join(map(re.escape, reserved))})$)[^/]+"


def path_id(raw: str, name: str) -> int:
    try:
        return parse_id(raw, name)
    except ValidationError as exc:
        raise bad_request(str(exc)) from None


def read_response(entity: Entity, raw_id: str) -> Response:
    """The row, with the tier it came from and its write-back state in headers."""
    row_id = path_id(raw_id, entity.primary_key)
    token = consistency.presented(request.environ)
    row = read_row(near_cache(), reads(), entity.name, row_id, token)
    response = Response(row.body, mimetype="application/json", headers=read_headers(row))
    return response if token == NO_TOKEN else answer_token(response, token, row.version)


def update_response(entity: Entity, raw_id: str) -> Response:
    row_id = path_id(raw_id, entity.primary_key)
    token = consistency.presented(request.environ)
    result = update_row(near_cache(), updates(), entity.name, row_id, json.dumps(json_body()))
    # Made here, not by jsonify: its JSON provider and response class were 9 % of an update's profile.
    body = accepted_body(entity.primary_key, result)
    return answer_token(Response(body, 202, mimetype="application/json"), token, result.version)


def bulk_response(entity_name: str, ids, token: int, accepted) -> Response:
    """The 202 of a bulk that wrote `ids` (every row of the entity when None)."""
    bulk_written(entity_name, ids, accepted.max_version)
    response = jsonify({"accepted": accepted.accepted})
    response.status_code = 202
    return answer_token(response, token, accepted.max_version)


def bulk_update_response(entity: Entity) -> Response:
    token = consistency.presented(request.environ)
    body = json_body()
    extra = sorted(set(body) - {"updates"})
    if extra:
        raise bad_request(f"{extra[0]}: unknown field; expected only 'updates'")
    # cache-svc checks the list and every item, with its index in the message.
    updates = body.get("updates")
    accepted = cache().bulk_update(entity.name, updates)
    return bulk_response(entity.name, [parse_id(update[entity.primary_key]) for update in updates], token, accepted)


def entity_routes(entity: Entity) -> list[tuple]:
    """(rule, endpoint, view, method) of an entity's routes; the path variable of a row
    is its primary key, as in /albums/<album_id>."""
    @requires("reader")
    def read(**path):
        return read_response(entity, path[entity.primary_key])

    @requires("writer")
    def update(**path):
        return update_response(entity, path[entity.primary_key])

    @requires("writer")
    def bulk_update():
        return bulk_update_response(entity)

    beside = ("bulk", RANDOM_TITLES) if entity.name == "album" else ("bulk",)
    row = f"/{entity.collection}/<segment({', '.join(map(repr, beside))}):{entity.primary_key}>"
    return [(row, f"get_{entity.name}", read, "GET"), (row, f"patch_{entity.name}", update, "PATCH"),
            (f"/{entity.collection}/bulk", f"bulk_update_{entity.name}", bulk_update, "POST")]


@api.record
def add_entity_routes(state):
    """Every entity registered when an app is made gets its routes in it."""
    for entity in ENTITIES.values():
        for rule, endpoint, view, method in entity_routes(entity):
            state.add_url_rule(rule, endpoint, view, methods=[method])


@api.post(f"/albums/{RANDOM_TITLES}")
@requires("admin")
def bulk_random_albums():
    token = consistency.presented(request.environ)
    # Every album gets a title: every one this process holds leaves.
    return bulk_response("album", None, token, cache().randomize_album_titles(include_rows=False))


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
