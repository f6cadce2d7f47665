"""Tokens and roles in a real gateway process (beside the open one the other tests use)."""

import time

import pytest
import requests

from testkit.stack import tokens_env

pytestmark = pytest.mark.e2e

# NEAR_CACHE_MAX_LAG_MS (1 s) and a heartbeat interval: how long another process may serve the old value.
NEAR_CACHE_BOUND_S = 1.5
TOKENS = {"reader": "e2e-access-reader-token", "writer": "e2e-access-writer-token", "admin": "e2e-access-admin-token"}


@pytest.fixture(scope="module")
def guarded(stack):
    stack.add_gateway("gateway-guarded", {
        "API_TOKENS": tokens_env(TOKENS),
        "LEGACY_ROUTES": "false",
    })
    stack.start("gateway-guarded")
    yield stack.gateway_url_of("gateway-guarded")
    stack.stop("gateway-guarded")


def call(method, url, role=None, **kwargs):
    headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
    return requests.request(method, url, headers=headers, timeout=30, **kwargs)


def test_roles_decide_who_reads_writes_and_discards(guarded):
    assert call("GET", f"{guarded}/healthz").status_code == 200
    anonymous = call("GET", f"{guarded}/albums/40")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert call("GET", f"{guarded}/albums/40", "reader").status_code == 200
    assert call("PATCH", f"{guarded}/albums/40", "reader", json={"title": "Reader's"}).status_code == 403
    assert call("PATCH", f"{guarded}/albums/40", "writer", json={"title": "Writer's"}).status_code == 202
    # The write reaches every gateway worker's near cache within the documented bound
    # (guarantee 9), not at once: a read may land on another worker than the write.
    deadline = time.monotonic() + NEAR_CACHE_BOUND_S
    while call("GET", f"{guarded}/albums/40", "reader").json()["title"] != "Writer's":
        assert time.monotonic() < deadline, "the reader never saw the writer's title"
        time.sleep(0.02)
    assert call("DELETE", f"{guarded}/write-back/dead-letters/album:40", "writer").status_code == 403
    assert call("POST", f"{guarded}/write-back/flush?wait=30", "admin").status_code == 200
    assert call("GET", f"{guarded}/album?album_id=40", "admin").status_code == 404


def test_admin_actions_are_logged_with_the_token_name_never_the_token(guarded, stack):
    assert call("POST", f"{guarded}/write-back/flush?wait=30", "admin").status_code == 200
    assert call("DELETE", f"{guarded}/write-back/dead-letters/album:41", "writer").status_code == 403
    log = stack.logs("gateway-guarded", tail=400)
    assert "POST '/write-back/flush' by API_TOKENS entry 3 (admin)" in log
    # Refused requests and reads are not audit lines; no token appears anywhere.
    assert "DELETE '/write-back/dead-letters/album:41' by" not in log
    assert not any(token in log for token in TOKENS.values())


def test_an_open_gateway_refuses_to_listen_beyond_loopback(stack):
    stack.add_gateway("gateway-exposed", {"GATEWAY_HOST": "0.0.0.0", "API_TOKENS": ""})
    with pytest.raises(RuntimeError, match="exited"):
        stack.start("gateway-exposed")
    assert "ALLOW_ANONYMOUS" in stack.logs("gateway-exposed", tail=200)
