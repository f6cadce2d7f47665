"""The pages the gateway serves beside the API: the write-back console, the contract
(openapi.json) and Swagger UI showing it at /docs; all open, none holding data."""

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_from_directory

from . import openapi
from .errors import ApiError
from .request_hooks import requires

# The write-back console: a static page and its files, served as they are (no build step).
CONSOLE_DIR = Path(__file__).with_name("console")
CONSOLE_ASSETS = {"console.js": "text/javascript", "console.css": "text/css", "icon.svg": "image/svg+xml"}
# The page loads its own files and calls this gateway, nothing else.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONSOLE_HEADERS = {"Content-Security-Policy": CONSOLE_POLICY, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer"}
CONSOLE_ASSET_MAX_AGE_S = 300

console_docs = Blueprint("console_docs", __name__)


@console_docs.get("/openapi.json")
@requires("none")
def openapi_document():
    return jsonify(current_app.extensions["openapi"])


@console_docs.get("/docs")
@requires("none")
def docs():
    return Response(openapi.DOCS_PAGE, mimetype="text/html")


@console_docs.get("/docs/<asset>")
@requires("none")
def docs_asset(asset):
    if asset not in openapi.DOCS_ASSETS:
        raise ApiError(404, "not_found", f"docs/{asset}: no such file; the page loads {', '.join(openapi.DOCS_ASSETS)}")
    return send_from_directory(openapi.SWAGGER_UI_DIR, asset, mimetype=openapi.DOCS_ASSETS[asset])


@console_docs.get("/console")
@requires("none")
def console():
    # The page holds no data: every figure comes from the API, with the caller's token.
    response = send_from_directory(CONSOLE_DIR, "index.html", mimetype="text/html", max_age=0)
    response.headers.update(CONSOLE_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


@console_docs.get("/console/<asset>")
@requires("none")
def console_asset(asset):
    if asset not in CONSOLE_ASSETS:
        raise ApiError(404, "not_found", f"console/{asset}: no such file; the page loads {', '.join(CONSOLE_ASSETS)}")
    response = send_from_directory(CONSOLE_DIR, asset, mimetype=CONSOLE_ASSETS[asset],
                                   max_age=CONSOLE_ASSET_MAX_AGE_S)
    response.headers.update(CONSOLE_HEADERS)
    return response
