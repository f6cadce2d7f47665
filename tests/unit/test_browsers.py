"""What other sites' pages may make the gateway do, bad bodies and bounded labels, in the
Flask app with a stand-in cache client (tests/e2e/test_browser_attacks.py does it against
real processes): a request that gets past the checks reaches the client, which answers 503."""

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest

from chinook.config import ConfigError, Settings
from chinook.rate_limited_log import RateLimitedLog
from gateway import request_hooks
from gateway.app import create_app
from gateway.auth import Access, digest
from gateway.browsers import AllowedHosts
from gateway.json_input import MAX_JSON_DEPTH, nested_deeper_than
from tests.unit.test_auth import BEARER, PASSED, TOKENS, UnavailableCache

BULK = {"updates": [{"album_id": 1, "title": "x"}]}


def open_gateway(**settings):
    """No token configured: anonymous admin, as `make run` is."""
    return create_app(Settings(gateway_near_cache_rows=0, **settings), cache_client=UnavailableCache()).test_client()


def guarded_gateway(**settings):
    return open_gateway(api_tokens=TOKENS, **settings)


def error_of(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"]["code"] == code
    return response.json["error"]["message"]


def test_a_write_whose_body_is_not_json_is_415_naming_the_type():
    api = open_gateway()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = api.post("/albums/bulk", data=json.dumps(BULK), content_type=content_type)
        assert "expected Content-Type: application/json" in error_of(response, 415, "unsupported_media_type")
    assert "no Content-Type" in error_of(api.patch("/albums/1", data=b'{"title": "x"}'), 415,
                                         "unsupported_media_type")
    assert api.post("/albums/bulk", data=json.dumps(BULK),
                    content_type="application/json; charset=utf-8").status_code == PASSED


def test_a_write_without_a_body_needs_no_content_type_but_a_forms_empty_one_is_refused():
    api = open_gateway()
    assert api.post("/write-back/flush").status_code == PASSED
    assert api.delete("/write-back/dead-letters/album:1").status_code == PASSED
    error_of(api.post("/write-back/flush", content_type="application/x-www-form-urlencoded"), 415,
             "unsupported_media_type")


def test_the_media_type_is_checked_after_the_token():
    refused = guarded_gateway().post("/albums/bulk", data="x", content_type="text/plain")
    error_of(refused, 401, "unauthenticated")


@pytest.mark.parametrize("method, path", [("PATCH", "/albums/1"), ("POST", "/albums/bulk"),
                                          ("DELETE", "/write-back/dead-letters/album:1"),
                                          ("GET", "/update-album"), ("GET", "/duplicate_database")])
def test_a_change_sent_by_another_sites_page_is_403(method, path):
    api = open_gateway()
    body = BULK if path == "/albums/bulk" else {"title": "x"} if method == "PATCH" else None
    cross_site = api.open(path, method=method, json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert "Sec-Fetch-Site: cross-site" in error_of(cross_site, 403, "permission_denied")
    foreign = api.open(path, method=method, json=body, headers={"Origin": "https://evil.example"})
    assert "Origin 'https://evil.example' is not this gateway's own (http://localhost)" \
        in error_of(foreign, 403, "permission_denied")
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": "http://localhost"}, {"Origin": "https://localhost", "X-Forwarded-Proto": "https"}):
        assert api.open(path, method=method, json=body, headers=headers).status_code == PASSED, headers


def test_another_port_of_the_same_host_is_another_origin():
    api = open_gateway()
    refused = api.patch("/albums/1", json={"title": "x"}, headers={"Host": "localhost:5000",
                                                                   "Origin": "http://localhost:8080"})
    error_of(refused, 403, "permission_denied")
    assert api.patch("/albums/1", json={"title": "x"}, headers={"Host": "localhost:5000",
                                                                "Origin": "http://localhost:5000"}).status_code == PASSED


def test_reads_stay_open_to_other_sites_pages():
    api = open_gateway()
    assert api.get("/albums/1", headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}) \
        .status_code == PASSED


def test_an_open_gateway_answers_to_loopback_names_only():
    api = open_gateway()
    for host in ("evil.example", "evil.example:5000", "10.0.0.5:5000", "localhost.evil.example"):
        assert "ALLOWED_HOSTS" in error_of(api.get("/healthz", headers={"Host": host}), 400, "invalid_argument")
    for host in ("localhost", "localhost:5000", "127.0.0.1:61234", "[::1]:5000", "LOCALHOST"):
        assert api.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_with_tokens_any_host_is_answered_unless_allowed_hosts_says_otherwise():
    assert guarded_gateway().get("/healthz", headers={"Host": "10.0.0.5:5000"}).status_code == 200
    api = guarded_gateway(allowed_hosts="api.example.com, 10.0.0.5:5000")
    assert api.get("/healthz", headers={"Host": "10.0.0.5:5000"}).status_code == 200
    assert api.get("/healthz", headers={"Host": "api.example.com:8443"}).status_code == 200
    error_of(api.get("/healthz", headers={"Host": "10.0.0.5:5001"}), 400, "invalid_argument")
    error_of(api.get("/healthz", headers={"Host": "localhost"}), 400, "invalid_argument")
    # A raised anonymous role is what a rebinding page gets: loopback names only, as when open.
    error_of(guarded_gateway(anonymous_role="reader").get("/healthz", headers={"Host": "evil.example"}), 400,
             "invalid_argument")
    assert open_gateway(allowed_hosts="*").get("/healthz", headers={"Host": "evil.example"}).status_code == 200


@pytest.mark.parametrize("value", ["http://localhost", "local host", "[::1", "localhost:99999", "a/b"])
def test_a_bad_allowed_hosts_entry_stops_the_start(value):
    with pytest.raises(ConfigError, match="ALLOWED_HOSTS: .* is not a host name"):
        AllowedHosts.from_settings(Settings(allowed_hosts=value), "admin")


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\:,'), children,
                                                                      max_size=3),
    max_leaves=30)


@given(json_values, st.integers(min_value=1, max_value=6))
def test_nesting_is_measured_as_the_parser_sees_it(value, limit):
    assert nested_deeper_than(json.dumps(value).encode(), limit) == (depth(value) > limit)


def test_deep_or_malformed_bodies_are_400_never_500():
    api = open_gateway()
    for body in (b"[" * 100_000, b"{" * 100_000, b'{"title": ' + b"[" * 990 + b"]" * 990 + b"}",
                 json.dumps({"updates": [{"album_id": 1, "title": json.loads("[" * 8 + "]" * 8)}]}).encode()):
        assert "nested deeper than 8 levels" in error_of(
            api.post("/albums/bulk", data=body, content_type="application/json"), 400, "invalid_argument")
    for body in (b'{"title": "[[[[[[[[[[[[[["', b'{"title": "x"', b"]]]]]]]]]]]]}"):
        assert "not valid JSON" in error_of(api.patch("/albums/1", data=body, content_type="application/json"),
                                            400, "invalid_argument")
    nested_to_the_limit = {"updates": [{"album_id": 1, "title": json.loads("[" * (MAX_JSON_DEPTH - 3) + "]" * 5)}]}
    assert api.post("/albums/bulk", json=nested_to_the_limit).status_code == PASSED


@pytest.mark.parametrize("digits", [21, 4300, 5000])
def test_over_long_integers_are_400(digits):
    api = open_gateway()
    for body in (f'{{"artist_id": {"9" * digits}}}', f'{{"multiplier": -{"9" * digits}}}'):
        path = "/albums/1" if "artist_id" in body else "/tasks/duplicate"
        response = api.open(path, method="PATCH" if "artist_id" in body else "POST", data=body,
                            content_type="application/json")
        assert f"an integer of {digits} digits" in error_of(response, 400, "invalid_argument")
    assert "got 5000 digits" in error_of(api.get("/albums/" + "9" * 5000), 400, "invalid_argument")


def test_made_up_methods_add_no_metric_series():
    api = open_gateway()
    for method in ("FOO", "BAR", "PROPFIND"):
        assert api.open("/albums/1", method=method).status_code == 405
    exposition = generate_latest(REGISTRY).decode()
    assert 'method="other",route="unmatched",status="405"' in exposition
    assert not any(f'method="{method}"' in exposition for method in ("FOO", "BAR", "PROPFIND"))
    # Nor anything else that lasts: the timers kept per series do not grow with them.
    timers = request_hooks.http_timer.cache_info().currsize
    for number in range(50):
        assert api.open("/albums/1", method=f"MADEUP{number}").status_code == 405
    assert request_hooks.http_timer.cache_info().currsize == timers


def test_readiness_details_are_for_callers_who_may_read(caplog):
    api = guarded_gateway()
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        anonymous = api.get("/readyz")
    assert error_of(anonymous, 503, "unavailable") == "not ready"
    assert error_of(api.get("/readyz", headers={"Authorization": "Bearer not-a-known-token"}), 503,
                    "unavailable") == "not ready"
    details = error_of(api.get("/readyz", headers=BEARER["read"]), 503, "unavailable")
    assert details == "cache service unreachable: cache-svc is a stand-in"
    assert "not ready: cache service unreachable: cache-svc is a stand-in" in caplog.text


def test_refusals_are_logged_once_a_window_per_address_and_status_without_the_token(caplog):
    api = guarded_gateway()
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        for _ in range(5):
            assert api.get("/albums/1", headers={"Authorization": "Bearer wrong-token-of-tests"}).status_code == 401
        assert api.patch("/albums/1", json={"title": "x"}, headers=BEARER["read"]).status_code == 403
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["401 to GET '/albums/1' from 127.0.0.1: the bearer token is not valid",
                     ("403 to PATCH '/albums/1' from 127.0.0.1: PATCH /albums/<album_id> needs role writer; "
                      "the token's role is reader")]
    assert "tests" not in caplog.text


def test_the_audit_line_quotes_the_path(caplog):
    api = guarded_gateway()
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        api.delete("/write-back/dead-letters/album:1%0A2024 INFO forged line", headers=BEARER["admin"])
    [line] = [record.getMessage() for record in caplog.records if record.name == "gateway.audit"]
    assert "\n" not in line
    assert line == "DELETE '/write-back/dead-letters/album:1\\n2024 INFO forged line' by API_TOKENS entry 3 (admin)"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_rate_limited_log_counts_what_it_left_out(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), 10, clock)
    with caplog.at_level(logging.INFO, logger="test.limited"):
        for _ in range(4):
            limited.log(logging.INFO, ("10.0.0.1", 401), "refused %s", "a")
            clock.now += 1
        limited.log(logging.INFO, ("10.0.0.2", 401), "refused %s", "b")
        clock.now += 10
        limited.log(logging.INFO, ("10.0.0.1", 401), "refused %s", "a")
    assert [record.getMessage() for record in caplog.records] == [
        "refused a", "refused b", "refused a (3 more like it since the last line, not logged)"]


def test_a_rate_limited_log_holds_a_bounded_number_of_keys(monkeypatch, caplog):
    monkeypatch.setattr("chinook.rate_limited_log.MAX_KEYS", 3)
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), 10, clock)
    with caplog.at_level(logging.INFO, logger="test.limited"):
        for address in range(10):
            limited.log(logging.INFO, (address,), "from %d", address)
        # The first three, and one for the others (its line names the first of them).
        assert len(limited._seen) == 4
        clock.now += 10
        limited.log(logging.INFO, ("late",), "from %s", "late")
        assert len(limited._seen) == 1
    assert [record.getMessage() for record in caplog.records] == ["from 0", "from 1", "from 2", "from 3", "from late"]


def test_tokens_under_16_characters_stop_the_start_without_being_named():
    with pytest.raises(ConfigError, match="entry 2 is shorter than 16 characters") as error:
        Access.from_settings(Settings(api_tokens="reader:reader-token-long-enough,admin:SHORT-1234"))
    assert "SHORT" not in str(error.value)


def test_a_token_given_twice_stops_the_start_without_being_named(tmp_path):
    with pytest.raises(ConfigError, match="API_TOKENS entry 1 and API_TOKENS entry 2 hold the same token") as error:
        Access.from_settings(Settings(api_tokens="reader:TWICE-token-of-tests,admin:TWICE-token-of-tests"))
    assert "TWICE" not in str(error.value)
    path = tmp_path / "tokens"
    path.write_text(f"writer {digest('ONCE-token-of-tests')} ci\nadmin {digest('TWICE-token-of-tests').upper()} ops\n")
    with pytest.raises(ConfigError, match=f"API_TOKENS entry 1 and API_TOKENS_FILE {path} line 2 hold the same"):
        Access.from_settings(Settings(api_tokens="reader:TWICE-token-of-tests", api_tokens_file=str(path)))
    path.write_text(f"writer {digest('ONCE-token-of-tests')}\nadmin {digest('ONCE-token-of-tests')}\n")
    with pytest.raises(ConfigError, match="line 1 and .* line 2 hold the same token"):
        Access.from_settings(Settings(api_tokens_file=str(path)))
