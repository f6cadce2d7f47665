"""The original demo's routes, with their original shapes: a blueprint the app registers
only while LEGACY_ROUTES is on."""

import json

from flask import Blueprint, Response, jsonify, request

from . import consistency
from .api import path_id, task_body
from .browsers import changes_state
from .errors import bad_request
from .extensions import cache, near_cache, reads
from .near_cache import NO_TOKEN
from .near_cache_protocol import answer_token, bulk_written, read_row
from .request_hooks import requires

legacy = Blueprint("legacy", __name__)


@legacy.get("/album")
@requires("reader")
def legacy_get_album():
    raw = request.args.get("album_id")
    if raw is None:
        raise bad_request("album_id: query parameter required, e.g. /album?album_id=193")
    row_id = path_id(raw, "album_id")
    token = consistency.presented(request.environ)
    read = read_row(near_cache(), reads(), "album", row_id, token)
    row = json.loads(read.body)
    response = jsonify({"album_id": row["album_id"], "title": row["title"]})
    return response if token == NO_TOKEN else answer_token(response, token, read.version)


@legacy.get("/update-album")
@requires("admin")
@changes_state
def legacy_update_all_albums():
    token = consistency.presented(request.environ)
    accepted = cache().randomize_album_titles(include_rows=True)
    bulk_written("album", None, accepted.max_version)
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
