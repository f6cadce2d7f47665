"""The gateway's mapping of cache-service failures to HTTP, with a stand-in client."""

import grpc
import pytest

from chinook.cache.v1 import cache_pb2
from chinook.config import Settings
from gateway.app import create_app


class RpcFailure(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FailingCache:
    def __init__(self, code):
        self.code = code

    def get_rows(self, keys):
        raise RpcFailure(self.code, "what went wrong")

    def update_rows(self, patches):
        raise RpcFailure(self.code, "what went wrong")


class OneCallFails(FailingCache):
    """The call succeeds; the read or update inside it carries the failure."""

    def get_rows(self, keys):
        return [cache_pb2.RowResult(id=k.id, code=self.code.value[0], message="what went wrong") for k in keys]

    def update_rows(self, patches):
        return [cache_pb2.RowResult(id=p.id, code=self.code.value[0], message="what went wrong") for p in patches]


@pytest.mark.parametrize("code, status, error_code", [
    (grpc.StatusCode.NOT_FOUND, 404, "not_found"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument"),
    (grpc.StatusCode.FAILED_PRECONDITION, 409, "failed_precondition"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "resource_exhausted"),
    (grpc.StatusCode.UNAVAILABLE, 503, "unavailable"),
    (grpc.StatusCode.CANCELLED, 503, "unavailable"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "deadline_exceeded"),
    (grpc.StatusCode.INTERNAL, 500, "internal"),
])
@pytest.mark.parametrize("cache_class, method", [(FailingCache, "GET"), (FailingCache, "PATCH"),
                                                 (OneCallFails, "GET"), (OneCallFails, "PATCH")])
def test_grpc_codes_map_to_http(code, status, error_code, cache_class, method):
    client = create_app(Settings(gateway_near_cache_rows=0), cache_client=cache_class(code)).test_client()
    response = client.open("/albums/1", method=method, json={"title": "x"} if method == "PATCH" else None)
    assert response.status_code == status
    assert response.json["error"]["code"] == error_code
    assert "what went wrong" in response.json["error"]["message"]
    assert ("Retry-After" in response.headers) == (status == 503)
