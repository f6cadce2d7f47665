"""Consistency tokens as the gateway reads and writes them: the format, the header winning
over the cookie, the cookie's attributes, and a 400 naming the header or the cookie before
anything reaches cache-svc (a stand-in that answers every call with 503)."""

import time

import pytest
from flask import Flask, Response

from gateway import consistency
from gateway.errors import ApiError
from gateway.near_cache import NO_TOKEN
from tests.unit.test_auth import PASSED, client

NOW_US = 1_733_300_000_000_000
TEN_MINUTES_US = 600_000_000
# Every route that reads or writes rows, and the body a write needs.
ROW_ROUTES = [("GET", "/albums/1", None), ("GET", "/artists/1", None), ("GET", "/album?album_id=1", None),
              ("PATCH", "/albums/1", {"title": "x"}), ("PATCH", "/artists/1", {"name": "x"}),
              ("POST", "/albums/bulk", {"updates": [{"album_id": 1, "title": "x"}]}),
              ("POST", "/albums/bulk-random", None), ("GET", "/update-album", None)]
# Their paths as the contract names them.
DOCUMENTED = {"/albums/1": "/albums/{album_id}", "/artists/1": "/artists/{artist_id}", "/album?album_id=1": "/album"}
ADMIN = {"Authorization": "Bearer admin-secret-of-tests"}


def parse(raw):
    return consistency.parse(raw, "X-Consistency-Token header", NOW_US)


def test_a_token_is_a_version_after_its_prefix():
    assert parse("v1.0") == 0
    assert parse("v1.1733299999999999") == NOW_US - 1
    assert parse(f"v1.{NOW_US + TEN_MINUTES_US}") == NOW_US + TEN_MINUTES_US


@pytest.mark.parametrize("raw, problem", [
    ("", "expected v1.<version>"), ("1733299999999999", "expected v1.<version>"), ("v2.5", "expected v1.<version>"),
    ("v1.", "expected v1.<version>"), ("v1.5 ", "expected v1.<version>"), ("v1.+5", "expected v1.<version>"),
    ("v1.٣", "expected v1.<version>"), ("v1.1_000", "expected v1.<version>"), ("v1." + "9" * 17, "expected"),
    ("v1.-5", "must not be negative"),
    (f"v1.{NOW_US + TEN_MINUTES_US + 1}", "more than 10 minutes ahead"),
])
def test_anything_else_is_refused_naming_where_it_came_from(raw, problem):
    with pytest.raises(ApiError) as refused:
        parse(raw)
    assert refused.value.status == 400 and refused.value.message.startswith("X-Consistency-Token header: ")
    assert problem in refused.value.message


def test_a_long_token_is_shown_cut_short():
    with pytest.raises(ApiError) as refused:
        parse("x" * 5000)
    assert len(refused.value.message) < 200


def presented(headers):
    with Flask(__name__).test_request_context(headers=headers) as context:
        return consistency.presented(context.request.environ)


def test_the_header_wins_over_the_cookie_and_both_must_be_tokens():
    now = time.time_ns() // 1000
    assert presented({}) == NO_TOKEN
    assert presented({"Cookie": "other=1"}) == NO_TOKEN
    assert presented({"Cookie": f"other=1; wb_token=v1.{now}"}) == now
    assert presented({"X-Consistency-Token": "v1.5", "Cookie": f"wb_token=v1.{now}"}) == 5
    with pytest.raises(ApiError, match="^wb_token cookie: "):
        presented({"Cookie": "wb_token=v1.x"})
    with pytest.raises(ApiError, match="^wb_token cookie: "):
        presented({"X-Consistency-Token": "v1.5", "Cookie": "wb_token=not-a-token"})
    with pytest.raises(ApiError, match="^X-Consistency-Token header: "):
        presented({"X-Consistency-Token": "v1.x", "Cookie": f"wb_token=v1.{now}"})
    assert presented({"Cookie": "my_wb_token=x; wb_tokens=y"}) == NO_TOKEN


@pytest.mark.parametrize("cookies", ['wb_token=v1.5\t/', 'a=1; wb_token =v1"5', "wb_token==/9+^Q\t:"])
def test_a_cookie_value_no_cookie_may_have_is_refused_too(cookies):
    with pytest.raises(ApiError, match="^wb_token cookie: .*no cookie may have"):
        presented({"Cookie": cookies})


def test_the_answer_carries_the_token_in_the_header_and_a_short_lived_strict_cookie():
    response = consistency.answer(Response(), 42, consistency.cookie_max_age_s(1000))
    assert response.headers["X-Consistency-Token"] == "v1.42"
    assert response.headers.getlist("Set-Cookie") == ["wb_token=v1.42; Max-Age=3; Path=/; HttpOnly; SameSite=Strict"]
    assert [consistency.cookie_max_age_s(ms) for ms in (1, 100, 1000, 1500)] == [1, 1, 3, 5]


@pytest.mark.parametrize("method, path, body", ROW_ROUTES)
def test_a_bad_token_is_refused_before_cache_svc_is_called(method, path, body):
    api = client()
    response = api.open(path, method=method, headers={**ADMIN, "X-Consistency-Token": "v1.-1"}, json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["message"].startswith("X-Consistency-Token header: "), response.json
    # The test client sends the cookies of its jar.
    api.set_cookie("wb_token", "garbage")
    response = api.open(path, method=method, headers=ADMIN, json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["message"].startswith("wb_token cookie: "), response.json
    api.delete_cookie("wb_token")
    response = api.open(path, method=method, headers={**ADMIN, "X-Consistency-Token": "v1.5"}, json=body)
    assert response.status_code == PASSED, response.json


def test_the_contract_lists_the_token_on_every_route_that_reads_or_writes_rows():
    document = client().get("/openapi.json").json
    for method, path, _ in ROW_ROUTES:
        operation = document["paths"][DOCUMENTED.get(path, path)][method.lower()]
        names = {parameter.get("$ref", "").rsplit("/", 1)[-1] for parameter in operation["parameters"]}
        assert {"ConsistencyToken", "ConsistencyCookie"} <= names, (method, path)
        answered = next(response for status, response in operation["responses"].items() if status.startswith("2"))
        headers = answered.get("headers") or document["components"]["responses"][
            answered["$ref"].rsplit("/", 1)[-1]]["headers"]
        assert {"X-Consistency-Token", "Set-Cookie"} <= set(headers), (method, path)
