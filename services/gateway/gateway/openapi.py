"""The HTTP API's contract as this gateway serves it: openapi.yaml beside this file, with
the rows' operations generated from the entity registry (openapi_entities.py); and the
Swagger UI page that shows it, with assets from the flask-swagger-ui package (no CDN)."""

import copy
from functools import cache
from importlib.resources import files
from pathlib import Path

import yaml

from chinook.entities import ENTITIES

from .auth import RANK
from .openapi_entities import add_entities

CONTRACT = Path(__file__).with_name("openapi.yaml")
LEGACY_TAG = "legacy"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

SWAGGER_UI_DIR = str(files("flask_swagger_ui") / "dist")
# The files the page loads, and their media types.
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
# Relative links, so that the page works behind a path prefix too. validatorUrl: null keeps
# Swagger UI from sending the document to an outside validator.
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>chinook-writeback gateway: HTTP API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", validatorUrl: null, deepLinking: true});
  </script>
</body>
</html>
"""


@cache
def contract() -> dict:
    """The hand-written part of the contract, every route but the entities', as written."""
    return yaml.safe_load(CONTRACT.read_text())


def operations(document: dict):
    """(path, method, operation) of every operation of the document."""
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def document(legacy_routes: bool, anonymous_role: str) -> dict:
    """The contract for a gateway with these settings and the entities registered now:
    without the legacy operations when it leaves them out, and with the token optional
    where the anonymous role suffices."""
    doc = copy.deepcopy(contract())
    add_entities(doc, list(ENTITIES.values()))
    if not legacy_routes:
        for path, item in list(doc["paths"].items()):
            for method in HTTP_METHODS:
                if LEGACY_TAG in item.get(method, {}).get("tags", ()):
                    del item[method]
            if not any(method in item for method in HTTP_METHODS):
                del doc["paths"][path]
        doc["tags"] = [tag for tag in doc["tags"] if tag["name"] != LEGACY_TAG]
    for _, _, operation in operations(doc):
        if operation["security"] and RANK[anonymous_role] >= RANK[operation["x-required-role"]]:
            # {} is the alternative of sending no credentials at all.
            operation["security"] = [{}, *operation["security"]]
    return doc
