"""The HTTP API's contract against the Flask app: the same routes, methods and roles, a
valid OpenAPI 3.1 document, and /docs and /console pages whose every asset the gateway serves."""

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from chinook.config import Settings
from chinook.entities import ENTITIES, RESERVED_COLLECTIONS, Column, Entity, register
from gateway.app import create_app
from gateway.browsers import STATE_CHANGING_METHODS, is_state_change
from gateway.openapi import operations
from gateway.request_hooks import route_label
from tests.unit.test_auth import TOKENS, UnavailableCache

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def make_app(**settings):
    values = {"gateway_near_cache_rows": 0, "api_tokens": TOKENS, **settings}
    return create_app(Settings(**values), cache_client=UnavailableCache())


def served_document(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def flask_operations(app) -> dict[tuple[str, str], str]:
    """(OpenAPI path, method) of every route the app serves, with the role it needs."""
    found = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = route_label(rule.rule).replace("<", "{").replace(">", "}")
        for method in rule.methods - IGNORED_METHODS:
            found[(path, method.lower())] = app.view_functions[rule.endpoint].required_role
    return found


@pytest.mark.parametrize("legacy_routes", [True, False])
def test_the_document_lists_exactly_the_routes_and_their_roles(legacy_routes):
    app = make_app(legacy_routes=legacy_routes)
    routes = flask_operations(app)
    documented = {(path, method): operation["x-required-role"]
                  for path, method, operation in operations(served_document(app))}
    assert sorted(set(routes) - set(documented)) == [], "routes the document lacks"
    assert sorted(set(documented) - set(routes)) == [], "operations with no route"
    assert documented == routes
    assert (("/album", "get") in routes) is legacy_routes


@pytest.mark.parametrize("legacy_routes", [True, False])
def test_the_document_is_valid_openapi_3_1(legacy_routes):
    document = served_document(make_app(legacy_routes=legacy_routes))
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["openapi"].startswith("3.1.")


def test_each_operation_declares_its_security_as_its_role_says():
    document = served_document(make_app())
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    for path, method, operation in operations(document):
        if operation["x-required-role"] == "none":
            assert operation["security"] == [], (method, path)
        else:
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert "401" in operation["responses"], (method, path)
            assert ("403" in operation["responses"]) is (operation["x-required-role"] != "reader"), (method, path)


def test_the_document_lists_the_refusals_of_bad_hosts_other_sites_and_other_media_types():
    app = make_app()
    documented = {(path, method): operation["responses"] for path, method, operation in operations(served_document(app))}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = route_label(rule.rule).replace("<", "{").replace(">", "}")
        for method in rule.methods - IGNORED_METHODS:
            responses = documented[(path, method.lower())]
            assert "400" in responses, (method, path)
            assert ("415" in responses) is (method in STATE_CHANGING_METHODS), (method, path)
            if is_state_change(method, app.view_functions[rule.endpoint]):
                assert "403" in responses, (method, path)


def test_a_token_is_optional_where_the_anonymous_role_suffices():
    document = served_document(make_app(anonymous_role="reader"))
    security = {(path, method): op["security"] for path, method, op in operations(document)}
    assert security[("/albums/{album_id}", "get")] == [{}, {"bearer": []}]
    assert security[("/albums/{album_id}", "patch")] == [{"bearer": []}]


def test_an_entity_registered_before_the_app_is_made_gets_its_routes_and_operations(registry):
    register(Entity(name="media_type", collection="media-types", table="media_type", primary_key="media_type_id",
                    columns=(Column("name", "varchar", max_length=120, nullable=True),)))
    app = make_app()
    document = served_document(app)
    validate(document, cls=OpenAPIV31SpecValidator)
    routes = flask_operations(app)
    assert {key: role for key, role in routes.items() if key[0].startswith("/media-types/")} == {
        ("/media-types/{media_type_id}", "get"): "reader", ("/media-types/{media_type_id}", "patch"): "writer",
        ("/media-types/bulk", "post"): "writer"}
    assert {(path, method) for path, method, _ in operations(document)} == set(routes)
    assert document["paths"]["/media-types/bulk"]["post"]["operationId"] == "bulkUpdateMediaTypes"
    assert document["components"]["schemas"]["MediaTypePatch"]["properties"]["name"] == {
        "description": "null clears it.", "type": ["string", "null"], "minLength": 1, "maxLength": 120,
        "pattern": "^[^\\u0000]*$"}
    assert document["components"]["schemas"]["EntityName"]["enum"] == ["album", "artist", "media_type"]
    admin = {"Authorization": "Bearer admin-secret-of-tests"}
    bulk = app.test_client().get("/media-types/bulk", headers=admin)
    assert bulk.status_code == 405 and set(bulk.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert "media_type_id: must be a positive integer" in \
        app.test_client().get("/media-types/x", headers=admin).json["error"]["message"]


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_reserved_collections_are_the_first_segments_of_the_fixed_routes():
    app = make_app(legacy_routes=True)
    collections = {entity.collection for entity in ENTITIES.values()}
    first_segments = {rule.rule.split("/")[1] for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert first_segments - collections == RESERVED_COLLECTIONS


def test_docs_are_served_by_the_gateway_alone_and_need_no_token():
    client = make_app().test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert re.findall(r"https?://", html) == [], "the page must not load anything from another host"
    parser = Links()
    parser.feed(html)
    assert len(parser.links) >= 2
    for link in parser.links:
        asset = client.get(urljoin("/docs", link))
        assert asset.status_code == 200, link
        assert len(asset.data) > 1000, link
    assert "url: \"openapi.json\"" in html and client.get(urljoin("/docs", "openapi.json")).status_code == 200
    missing = client.get("/docs/secrets.txt")
    assert missing.status_code == 404 and "swagger-ui.css" in missing.json["error"]["message"]


def test_the_console_is_served_by_the_gateway_alone_with_a_strict_policy():
    client = make_app().test_client()
    page = client.get("/console")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "connect-src 'self';" in policy
    assert "unsafe" not in policy and page.headers["Cache-Control"] == "no-cache"
    html = page.get_data(as_text=True)
    assert re.findall(r"https?://", html) == [], "the page must not load anything from another host"
    assert "<script>" not in html and " style=" not in html, "the policy allows no inline script or style"
    parser = Links()
    parser.feed(html)
    assert sorted(parser.links) == ["console/console.css", "console/console.js", "console/icon.svg"]
    for link in parser.links:
        asset = client.get(urljoin("/console", link))
        assert asset.status_code == 200 and len(asset.data) > 100, link
        assert "max-age=" in asset.headers["Cache-Control"] and asset.headers["ETag"], link
        assert client.get(urljoin("/console", link), headers={"If-None-Match": asset.headers["ETag"]}) \
            .status_code == 304, link
    assert "https://" not in client.get("/console/console.js").get_data(as_text=True)
    missing = client.get("/console/index.html")
    assert missing.status_code == 404 and "console.js" in missing.json["error"]["message"]


def test_a_method_the_document_does_not_list_answers_405_with_allow():
    app = make_app()
    client = app.test_client()
    admin = {"Authorization": "Bearer admin-secret-of-tests"}
    for path, item in served_document(app)["paths"].items():
        url = path.replace("{album_id}", "1").replace("{artist_id}", "1").replace("{task_id}", "t") \
            .replace("{key}", "album:1").replace("{asset}", "console.js")
        documented = {method.upper() for method in item if method.upper() in ("GET", "POST", "PATCH", "DELETE")}
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            response = client.open(url, method=method, headers=admin)
            assert response.status_code == 405, (method, url, response.json)
            assert set(response.headers["Allow"].split(", ")) - {"HEAD", "OPTIONS"} == documented, (method, url)
            assert response.json["error"]["message"] == f"{method} {url}: this URL takes {response.headers['Allow']}"
