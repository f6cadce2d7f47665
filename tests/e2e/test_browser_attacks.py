"""What another site's page can make a browser send, and bad input, against real gateway
processes: the open one of `make run` (no token, anonymous admin) and one with tokens.
Every refusal is a 4xx and leaves Postgres and Redis as they were."""

import json

import pytest
import requests

from gateway.auth import digest
from testkit.data_state import DataState
from testkit.stack import free_port, tokens_env

pytestmark = pytest.mark.e2e

TOKENS = {"reader": "browser-test-reader-token", "admin": "browser-test-admin-token"}
# Rows no other test of the session's system writes.
ALBUMS = (150, 151, 152)
# Each of the gateway's two worker processes keeps its own log window.
GATEWAY_WORKERS = 2


@pytest.fixture(scope="module")
def data_state(stack):
    return DataState(stack)


@pytest.fixture
def unchanged(data_state, api):
    """Asserts that nothing changed in Postgres and Redis, and the albums read as before."""
    before_rows = [api.get(f"/albums/{album}").json() for album in ALBUMS]
    before = data_state.settle_and_snapshot()
    yield
    assert data_state.differences(before, data_state.snapshot()) == []
    assert [api.get(f"/albums/{album}").json() for album in ALBUMS] == before_rows
    assert api.get("/write-back/status").json()["pending"] == 0


@pytest.fixture(scope="module")
def guarded(stack):
    stack.add_gateway("gateway-browsers", {"API_TOKENS": tokens_env(TOKENS)})
    stack.start("gateway-browsers")
    yield stack.gateway_url_of("gateway-browsers")
    stack.stop("gateway-browsers")


def bearer(role):
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


BULK = {"updates": [{"album_id": album, "title": "Changed by another site"} for album in ALBUMS]}


def test_a_bulk_sent_as_text_or_a_form_is_415_and_changes_nothing(api, unchanged):
    # What a <form enctype="text/plain"> on any site can send without asking.
    as_text = api.post("/albums/bulk", data=json.dumps(BULK), headers={"Content-Type": "text/plain"})
    assert "expected Content-Type: application/json, got 'text/plain'" in error_of(as_text, 415)
    as_form = api.post("/albums/bulk", data={"updates": json.dumps(BULK["updates"])})
    assert "got 'application/x-www-form-urlencoded'" in error_of(as_form, 415)
    empty_form = api.post("/write-back/flush", headers={"Content-Type": "application/x-www-form-urlencoded"})
    error_of(empty_form, 415)


@pytest.mark.parametrize("method, path, body", [
    ("PATCH", "/albums/150", {"title": "Changed by another site"}),
    ("POST", "/albums/bulk", BULK),
    ("GET", "/update-album", None),
])
def test_a_change_sent_from_another_site_is_403_and_changes_nothing(api, unchanged, method, path, body):
    # What an <img src> of the demo's route sends from another site's page.
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert "cross-site" in error_of(api.request(method, path, json=body, headers=image), 403)
    # A browser without Fetch Metadata still names the page's origin.
    foreign = api.request(method, path, json=body, headers={"Origin": "https://evil.example"})
    assert "Origin 'https://evil.example' is not this gateway's own" in error_of(foreign, 403)


def test_the_gateways_own_pages_may_change_data(api):
    own = {"Origin": api.base, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert api.patch("/albums/151", json={"title": "From the console"}, headers=own).status_code == 202
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 151") == [("From the console",)]


def test_reads_stay_open_to_other_sites(api):
    response = api.get("/albums/152", headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
    assert response.status_code == 200


def test_an_open_gateway_answers_to_loopback_names_only(api, unchanged):
    # DNS rebinding: the attacker's name, resolving to 127.0.0.1, is the Host.
    refused = api.patch("/albums/150", json={"title": "Rebound"}, headers={"Host": "evil.example"})
    assert "ALLOWED_HOSTS" in error_of(refused, 400)
    assert "ALLOWED_HOSTS" in error_of(api.get("/albums/150", headers={"Host": "evil.example:5000"}), 400)
    assert api.get("/albums/150", headers={"Host": "localhost"}).status_code == 200


def test_with_tokens_any_host_is_answered(guarded):
    # A rebinding page holds no token: a gateway that needs one may answer any name, a pod IP included.
    response = requests.get(f"{guarded}/albums/150", headers={"Host": "evil.example", **bearer("reader")}, timeout=30)
    assert response.status_code == 200
    assert requests.get(f"{guarded}/healthz", headers={"Host": "10.1.2.3:5000"}, timeout=30).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/albums/150", b"[" * 100_000),
    ("/albums/bulk", b"[" * 100_000),
    ("/albums/150", b'{"title": ' + b"[" * 990 + b"]" * 990 + b"}"),
    ("/albums/bulk", b'{"updates": [{"album_id": 150, "title": ' + b"[" * 990 + b"]" * 990 + b"}]}"),
])
def test_deeply_nested_json_is_400_and_changes_nothing(api, unchanged, path, body):
    method = "PATCH" if path == "/albums/150" else "POST"
    response = api.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert "nested deeper than 8 levels" in error_of(response, 400)


@pytest.mark.parametrize("digits", [25, 5000])
def test_over_long_integers_are_400_and_change_nothing(api, unchanged, digits):
    number = b"9" * digits
    for method, path, body in (("PATCH", "/albums/150", b'{"artist_id": ' + number + b"}"),
                               ("POST", "/albums/bulk", b'{"updates": [{"album_id": ' + number + b', "title": "x"}]}'),
                               ("POST", "/tasks/duplicate", b'{"multiplier": ' + number + b"}")):
        response = api.request(method, path, data=body, headers={"Content-Type": "application/json"})
        assert f"an integer of {digits} digits" in error_of(response, 400)
    assert "out of range" in error_of(api.get("/albums/" + "9" * 3000), 400)


def metric_series(api) -> list[str]:
    return [line for line in api.get("/metrics").text.splitlines() if line and not line.startswith("#")]


def test_made_up_methods_add_no_metric_series(api):
    metric_series(api)
    assert api.request("FOO", "/albums/150").status_code == 405
    first = metric_series(api)
    for method in ("BAR", "BAZ", "PURGE"):
        assert api.request(method, "/albums/150").status_code == 405
    after = metric_series(api)
    assert len(after) == len(first)
    assert [line for line in after if 'method="other"' in line]
    assert not [line for line in after if any(f'method="{m}"' in line for m in ("FOO", "BAR", "BAZ", "PURGE"))]


def test_readiness_details_are_for_token_holders_and_the_log(stack):
    stack.add_gateway("gateway-no-cache", {"API_TOKENS": tokens_env(TOKENS), "CACHE_SVC_ADDR": f"127.0.0.1:{free_port()}",
                                           "GRPC_TIMEOUT_S": "2"})
    stack.start("gateway-no-cache")
    try:
        url = f"{stack.gateway_url_of('gateway-no-cache')}/readyz"
        anonymous = requests.get(url, timeout=30)
        assert anonymous.status_code == 503 and anonymous.json() == {"error": {"code": "unavailable",
                                                                               "message": "not ready"}}
        details = error_of(requests.get(url, headers=bearer("reader"), timeout=30), 503)
        assert details.startswith("cache service unreachable: ") and len(details) > len("cache service unreachable: ")
        assert f"not ready: {details}" in stack.logs("gateway-no-cache", tail=200)

        # A request that fails behind the gateway: the internal address for administrators
        # and the log only.
        album = f"{stack.gateway_url_of('gateway-no-cache')}/albums/1"
        assert error_of(requests.get(album, headers=bearer("reader"), timeout=30), 503) == \
            "cache service unavailable; retry shortly (the gateway's log has the details)"
        internal = error_of(requests.get(album, headers=bearer("admin"), timeout=30), 503)
        assert internal.startswith("cache service unavailable: ") and "127.0.0.1" in internal
        assert "503 to GET '/albums/1': cache service unavailable: " in stack.logs("gateway-no-cache", tail=200)
    finally:
        stack.stop("gateway-no-cache")


@pytest.mark.parametrize("name, env, message", [
    ("gateway-short-token", {"API_TOKENS": "reader:reader-token-long-enough,admin:SHORT12345"},
     "the token of entry 2 is shorter than 16 characters"),
    ("gateway-token-twice", {"API_TOKENS": "reader:TWICE-browser-test-token,admin:TWICE-browser-test-token"},
     "API_TOKENS entry 1 and API_TOKENS entry 2 hold the same token"),
])
def test_the_gateway_refuses_to_start_with_a_short_or_repeated_token(stack, name, env, message):
    stack.add_gateway(name, env)
    with pytest.raises(RuntimeError, match="exited"):
        stack.start(name)
    assert stack.processes[name].returncode != 0
    log = stack.logs(name, tail=200)
    assert message in log
    assert "SHORT" not in log and "TWICE" not in log


def test_a_token_in_api_tokens_and_in_the_file_stops_the_start(stack, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"admin {digest('TWICE-browser-test-token')} ops\n")
    stack.add_gateway("gateway-token-in-both", {"API_TOKENS": "reader:TWICE-browser-test-token",
                                                "API_TOKENS_FILE": str(tokens_file)})
    with pytest.raises(RuntimeError, match="exited"):
        stack.start("gateway-token-in-both")
    log = stack.logs("gateway-token-in-both", tail=200)
    assert f"API_TOKENS entry 1 and API_TOKENS_FILE {tokens_file} line 1 hold the same token" in log
    assert "TWICE" not in log


def test_refusals_are_logged_a_line_per_window_without_the_token(guarded, stack):
    for _ in range(20):
        refused = requests.get(f"{guarded}/albums/150", headers={"Authorization": "Bearer guessed-browser-token"},
                               timeout=30)
        assert refused.status_code == 401
    forbidden = requests.post(f"{guarded}/write-back/flush", headers=bearer("reader"), timeout=30)
    assert forbidden.status_code == 403
    log = stack.logs("gateway-browsers", tail=400)
    lines = [line for line in log.splitlines() if "401 to GET '/albums/150' from 127.0.0.1" in line]
    assert 1 <= len(lines) <= GATEWAY_WORKERS, lines
    assert "403 to POST '/write-back/flush' from 127.0.0.1: POST /write-back/flush needs role admin" in log
    assert "guessed-browser-token" not in log and not any(token in log for token in TOKENS.values())


def test_a_line_break_in_the_path_cannot_forge_an_audit_line(guarded, stack):
    # No slash in it: the route's key is one path segment.
    forged = "INFO gateway.audit: DELETE album:2 by ops (admin)"
    response = requests.delete(f"{guarded}/write-back/dead-letters/album:1%0A{forged.replace(' ', '%20')}",
                               headers=bearer("admin"), timeout=30)
    assert response.status_code == 400
    log = stack.logs("gateway-browsers", tail=400)
    assert f"DELETE '/write-back/dead-letters/album:1\\n{forged}' by API_TOKENS entry 2 (admin)" in log
    assert not any(line.startswith(forged) for line in log.splitlines())
