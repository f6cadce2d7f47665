"""Bearer tokens and roles of the HTTP API, with a stand-in cache client: a request that
passes the check reaches the client, which answers UNAVAILABLE (503)."""

import grpc
import pytest

from chinook.config import ConfigError, Settings
from gateway.app import create_app
from gateway.auth import Access, digest, parse_api_tokens, parse_tokens_file
from gateway.errors import CallFailed

TOKENS = "reader:read-secret-of-tests,writer:write-secret-of-tests,admin:admin-secret-of-tests"
BEARER = {role: {"Authorization": f"Bearer {role}-secret-of-tests"} for role in ("read", "write", "admin")}
PASSED = 503  # the stand-in cache's answer: the request got past the check

ROUTES = [
    ("GET", "/albums/1", "reader"), ("GET", "/artists/1", "reader"), ("GET", "/tasks/abc", "reader"),
    ("GET", "/write-back/status", "reader"), ("GET", "/write-back/dead-letters", "reader"),
    ("GET", "/album?album_id=1", "reader"), ("GET", "/get_task_result?result_id=abc", "reader"),
    ("PATCH", "/albums/1", "writer"), ("PATCH", "/artists/1", "writer"), ("POST", "/albums/bulk", "writer"),
    ("POST", "/albums/bulk-random", "admin"), ("POST", "/tasks/duplicate", "admin"),
    ("POST", "/write-back/flush", "admin"), ("POST", "/write-back/dead-letters/album:1/retry", "admin"),
    ("DELETE", "/write-back/dead-letters/album:1", "admin"), ("GET", "/update-album", "admin"),
    ("GET", "/duplicate_database", "admin"),
]
RANKED = ["reader", "writer", "admin"]


class UnavailableCache:
    """Every call fails as if cache-svc were down: a request that gets that far passed."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "cache-svc is a stand-in")
        return call


def client(**settings):
    values = {"gateway_near_cache_rows": 0, "api_tokens": TOKENS, **settings}
    return create_app(Settings(**values), cache_client=UnavailableCache()).test_client()


def send(test_client, method, path, headers=None):
    body = {"title": "x"} if method == "PATCH" else {"updates": [{"album_id": 1, "title": "x"}]} \
        if path == "/albums/bulk" else None
    return test_client.open(path, method=method, headers=headers or {}, json=body)


@pytest.mark.parametrize("method, path, needed", ROUTES)
def test_each_route_needs_its_role(method, path, needed):
    api = client()
    anonymous = send(api, method, path)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.json["error"]["code"] == "unauthenticated" and needed in anonymous.json["error"]["message"]
    for role, headers in zip(RANKED, BEARER.values(), strict=False):
        response = send(api, method, path, headers)
        if RANKED.index(role) >= RANKED.index(needed):
            assert response.status_code == PASSED, (role, response.json)
        else:
            assert response.status_code == 403, (role, response.json)
            assert response.json["error"]["code"] == "permission_denied"


def test_refusals_name_the_route_as_documented():
    api = client()
    refused = send(api, "PATCH", "/albums/1", BEARER["read"])
    assert refused.json["error"]["message"] == "PATCH /albums/<album_id> needs role writer; the token's role is reader"
    anonymous = send(api, "POST", "/albums/bulk-random")
    assert anonymous.json["error"]["message"].startswith("POST /albums/bulk-random needs a bearer token")


def test_every_route_declares_its_role():
    app = create_app(Settings(gateway_near_cache_rows=0), cache_client=UnavailableCache())
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            assert hasattr(app.view_functions[rule.endpoint], "required_role"), rule.rule


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/readyz", "/openapi.json", "/docs", "/console"])
def test_health_and_metrics_are_open(path):
    assert client().get(path).status_code != 401


def test_bad_tokens_are_refused_without_naming_them():
    api = client()
    for header in ("Bearer wrong-secret-of-tests", "Basic read-secret-of-tests", "Bearer ", "read-secret-of-tests"):
        response = api.get("/albums/1", headers={"Authorization": header})
        assert response.status_code == 401 and "secret" not in response.get_data(as_text=True)


def test_the_anonymous_role_can_be_raised():
    api = client(anonymous_role="reader")
    assert api.get("/albums/1").status_code == PASSED
    assert api.patch("/albums/1", json={"title": "x"}).status_code == 401


def test_without_tokens_the_gateway_is_open_on_loopback_only():
    open_app = create_app(Settings(gateway_near_cache_rows=0), cache_client=UnavailableCache()).test_client()
    assert open_app.post("/write-back/flush").status_code == PASSED
    with pytest.raises(ConfigError, match="GATEWAY_HOST=0.0.0.0 is reachable from other machines"):
        Access.from_settings(Settings(gateway_host="0.0.0.0"))
    assert Access.from_settings(Settings(gateway_host="0.0.0.0", allow_anonymous=True)).anonymous_role == "admin"
    assert Access.from_settings(Settings(gateway_host="0.0.0.0", api_tokens=TOKENS)).anonymous_role == "none"


def test_legacy_routes_can_be_removed():
    api = client(legacy_routes=False)
    assert api.get("/album?album_id=1", headers=BEARER["admin"]).status_code == 404
    assert api.get("/albums/1", headers=BEARER["admin"]).status_code == PASSED


def test_a_tokens_file_holds_digests_only(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# role sha256 name\nadmin {digest('from-file')} ops laptop\n\nreader {digest('r')}\n")
    tokens = parse_tokens_file(str(path))
    assert [(t.role, t.name) for t in tokens] == [("admin", "ops laptop"), ("reader", f"{path} line 4")]
    api = client(api_tokens="", api_tokens_file=str(path))
    assert api.post("/write-back/flush", headers={"Authorization": "Bearer from-file"}).status_code == PASSED
    assert api.post("/write-back/flush", headers={"Authorization": "Bearer r"}).status_code == 403


@pytest.mark.parametrize("text, message", [
    ("reader", "entry 1 must be role:token"),
    ("reader:SECRET-1-of-16-characters,owner:SECRET-2-of-16-characters", "entry 2 must be role:token"),
    ("none:SECRET-3", "entry 1 must be role:token"),
])
def test_bad_api_tokens_name_the_entry_not_the_token(text, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_api_tokens(text)
    assert "SECRET" not in str(error.value)


def test_a_bad_tokens_file_names_the_line(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"admin {digest('x')}\nwriter not-a-digest\n")
    with pytest.raises(ConfigError, match="line 2"):
        parse_tokens_file(str(path))
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_tokens_file(str(tmp_path / "missing"))
