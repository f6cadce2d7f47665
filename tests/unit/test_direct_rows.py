"""gateway/direct_rows.py: the row reads and updates it answers itself, and the requests it
hands to the Flask app, compared with what the Flask app alone answers to the same
requests, with a stand-in cache client."""

import time

import grpc
import pytest
from prometheus_client import REGISTRY
from werkzeug.test import Client

from chinook.cache.v1 import cache_pb2
from chinook.config import Settings
from gateway.app import create_app
from gateway.direct_rows import DirectRows
from gateway.errors import CallFailed

TOKENS = "reader:read-secret-of-tests,writer:write-secret-of-tests"
READER = {"Authorization": "Bearer read-secret-of-tests"}
WRITER = {"Authorization": "Bearer write-secret-of-tests"}
JSON = "application/json"
HELD = range(1, 11)
# Ids the stand-in refuses in the reply (cache-svc's own checks), fails the call for, or
# does not know.
REFUSED_ID, UNAVAILABLE_ID, MISSING_ID = 13, 14, 15


class StandInCache:
    """Answers as cache-svc does, from a clock of its own, so that two apps given the
    same requests give the same versions."""

    def __init__(self):
        self.version = 1_000

    def get_rows(self, keys):
        if any(k.id == UNAVAILABLE_ID for k in keys):
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "cache-svc is a stand-in")
        return [cache_pb2.RowResult(id=k.id, code=grpc.StatusCode.NOT_FOUND.value[0], message=f"album {k.id} not found")
                if k.id == MISSING_ID else
                cache_pb2.RowResult(id=k.id, version=self.version, row_json=f'{{"album_id": {k.id}, "title": "read"}}',
                                    cache_hit=True, write_back=cache_pb2.WRITE_BACK_STATE_CLEAN) for k in keys]

    def update_rows(self, patches):
        if any(p.id == UNAVAILABLE_ID for p in patches):
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "cache-svc is a stand-in")
        results = []
        for patch in patches:
            self.version += 1
            if patch.id == REFUSED_ID:
                results.append(cache_pb2.RowResult(id=patch.id, code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                   message="title: must be a string"))
            else:
                results.append(cache_pb2.RowResult(id=patch.id, version=self.version))
        return results


def make_app(**settings):
    app = create_app(Settings(gateway_near_cache_rows=0, **settings), cache_client=StandInCache())
    near = app.extensions["near_cache"]
    near.max_rows = 100
    near.enable()
    near.trust_until(time.monotonic() + 3600)
    for row_id in HELD:
        near.fill(("album", row_id), near.reserve(("album", row_id)), 7, "clean",
                  f'{{"album_id": {row_id}, "title": "held"}}'.encode())
    return app


class Counted:
    """The Flask app's wsgi_app, counting the requests handed to it."""

    def __init__(self, wsgi_app):
        self.wsgi_app, self.calls = wsgi_app, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.wsgi_app(environ, start_response)


def answers(requests, **settings):
    """Each request's answer from an app with direct_rows, whether direct_rows answered it,
    and the answer of an app without it (its Flask app alone)."""
    with_direct, flask_alone = make_app(**settings), make_app(**settings)
    direct = with_direct.wsgi_app
    assert isinstance(direct, DirectRows)
    handed_on = direct.wsgi_app = Counted(direct.wsgi_app)
    plain = Client(flask_alone.wsgi_app.wsgi_app, use_cookies=False)
    out = []
    for method, path, kwargs in requests:
        before = handed_on.calls
        got = Client(direct, use_cookies=False).open(path, method=method, **kwargs)
        expected = plain.open(path, method=method, **kwargs)
        out.append((shown(got), handed_on.calls == before, shown(expected)))
    return out


def shown(response):
    return response.status_code, sorted(response.headers.items()), response.get_data()


def patch(body, content_type=JSON, headers=None, row_id=1):
    return ("PATCH", f"/albums/{row_id}", {"data": body, "content_type": content_type, "headers": headers or {}})


def get(path, headers=None, **kwargs):
    return ("GET", path, {"headers": headers or {}, **kwargs})


ANSWERED_DIRECTLY = [
    get("/albums/1"),
    get("/albums/11"),
    get("/albums/2", headers={"X-Consistency-Token": "v1.9"}),
    get(f"/albums/{MISSING_ID}"),
    get(f"/albums/{UNAVAILABLE_ID}"),
    get("/albums/10", headers={"X-Consistency-Token": "v1.3"}),
    get("/albums/2", headers={"X-Consistency-Token": "v1.7"}),
    get("/albums/3", headers={"Cookie": "wb_token=v1.3"}),
    get("/albums/4", headers={"Cookie": "other=1; wb_token=v1.5", "X-Consistency-Token": "v1.2"}),
    patch(b'{"title": "new"}'),
    patch(b'{"title": "new", "artist_id": 2}', content_type="application/json; charset=utf-8", row_id=2),
    patch(b'{"title": "new"}', headers={"X-Consistency-Token": "v1.99999"}, row_id=3),
    patch(b'{"title": "new"}', headers={"Cookie": "wb_token=v1.88888"}, row_id=5),
    patch(b'{"title": 1}', row_id=REFUSED_ID),
    patch(b'{"title": "new"}', row_id=UNAVAILABLE_ID),
]

HANDED_ON = [
    get("/albums/1", query_string="fields=title"),
    get("/albums/01"),
    get("/albums/99999999999"),
    get("/albums/bulk"),
    get("/albums/1/"),
    get("/albums/1", headers={"Host": "attacker.example"}),
    get("/albums/1", headers={"X-Consistency-Token": "v1.x"}),
    get("/albums/1", headers={"Cookie": 'wb_token="v1 3"'}),
    get("/albums/1", headers={"Cookie": "wb_token=v1.x"}),
    get("/albums/1", headers={"Cookie": "wb_token=v1.3", "X-Consistency-Token": "v1"}),
    ("HEAD", "/albums/1", {}),
    ("DELETE", "/albums/1", {}),
    patch(b'{"title": "new"}', content_type="text/plain"),
    patch(b'{"title": "new"}', content_type="application/jsonp"),
    patch(b'{"title": "new"}', content_type=None),
    patch(b'{"title": "new"}', headers={"Origin": "http://attacker.example"}),
    patch(b'{"title": "new"}', headers={"Origin": "http://localhost"}),
    patch(b'{"title": "new"}', headers={"Sec-Fetch-Site": "cross-site"}),
    patch(b""),
    patch(b"[1, 2]"),
    patch(b'{"title": '),
    patch(b'{"title": NaN}'),
    patch(b'{"title": ' + b"9" * 30 + b"}"),
    patch(b'{"a": ' + b"[" * 20 + b"]" * 20 + b"}"),
    patch(b'{"title": "x"}', headers={"X-Consistency-Token": "v1.-5"}),
    patch(b'{"title": "' + b"x" * 70_000 + b'"}'),
    ("PATCH", "/albums/1", {"data": b'{"title": "x"}', "content_type": JSON,
                            "environ_overrides": {"CONTENT_LENGTH": "\u00b9\u00b2"}}),
    ("PATCH", "/albums/1", {"data": b'{"title": "x"}', "content_type": JSON,
                            "environ_overrides": {"CONTENT_LENGTH": " 14"}}),
]


@pytest.mark.parametrize("request_", ANSWERED_DIRECTLY, ids=lambda r: f"{r[0]} {r[1]} {r[2]}"[:90])
def test_answers_a_plain_row_request_itself_as_the_app_would(request_):
    [(got, direct, expected)] = answers([request_])
    assert direct
    assert got == expected


@pytest.mark.parametrize("request_", HANDED_ON, ids=lambda r: f"{r[0]} {r[1]} {r[2]}"[:90])
def test_hands_anything_else_to_the_app(request_):
    [(got, direct, expected)] = answers([request_])
    assert not direct
    assert got == expected


def test_roles_are_those_of_the_app():
    requests = [get("/albums/1"), get("/albums/1", headers=READER), get("/albums/1", headers={"Authorization": "Bearer no"}),
                patch(b'{"title": "x"}', headers=READER), patch(b'{"title": "x"}', headers=WRITER)]
    results = answers(requests, api_tokens=TOKENS)
    assert [got[0] for got, _, _ in results] == [401, 200, 401, 403, 202]
    assert [direct for _, direct, _ in results] == [False, True, False, False, True]
    assert all(got == expected for got, _, expected in results)


def test_a_read_after_an_update_shows_the_write_in_both():
    requests = [patch(b'{"title": "new"}', row_id=4), get("/albums/4"), get("/albums/4", headers={"X-Consistency-Token": "v1.1"})]
    results = answers(requests)
    assert all(got == expected for got, _, expected in results)
    # The write left the near cache (its row there was older): the read goes through
    # cache-svc, and keeps the row for the next.
    assert [dict(got[1])["X-Cache-Tier"] for got, _, _ in results[1:]] == ["redis", "near"]


def test_observes_the_duration_in_the_series_the_app_does():
    series = {"method": "GET", "route": "/albums/<album_id>", "status": "200"}
    count = lambda: REGISTRY.get_sample_value("chinook_http_request_duration_seconds_count", series) or 0
    before = count()
    [(_, direct, _)] = answers([get("/albums/1")])
    # Once for each app: direct_rows' answer and the Flask app's.
    assert direct and count() == before + 2
