"""The gateway's mapping of cache-service failures to HTTP, with a stand-in client."""

import grpc
import pytest

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

    def get_row(self, entity, row_id):
        raise RpcFailure(self.code, "what went wrong")


@pytest.mark.parametrize("code, status, error_code", [
    (grpc.StatusCode.NOT_FOUND, 404, "not_found"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument"),
    (grpc.StatusCode.FAILED_PRECONDITION, 409, "failed_precondition"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "resource_exhausted"),
    (grpc.StatusCode.UNAVAILABLE, 503, "unavailable"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "deadline_exceeded"),
    (grpc.StatusCode.INTERNAL, 500, "internal"),
])
def test_grpc_codes_map_to_http(code, status, error_code):
    client = create_app(Settings(), cache_client=FailingCache(code)).test_client()
    response = client.get("/albums/1")
    assert response.status_code == status
    assert response.json["error"]["code"] == error_code
    assert "what went wrong" in response.json["error"]["message"]
    assert ("Retry-After" in response.headers) == (status == 503)
