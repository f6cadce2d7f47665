"""Every error leaves the gateway as JSON {"error": {"code", "message"}}."""

import logging

import grpc
from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

# gRPC status of the cache service -> HTTP status and error code.
GRPC_TO_HTTP = {
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed_precondition"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    # A call cut short by cache-svc stopping: as worth a retry as an outage.
    grpc.StatusCode.CANCELLED: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "deadline_exceeded"),
}
RETRY_AFTER_S = "1"
# What a caller other than an administrator is told of a failure behind the gateway.
SERVER_FAILURES = {
    "unavailable": "cache service unavailable; retry shortly (the gateway's log has the details)",
    "deadline_exceeded": "the cache service did not answer in time; retry shortly",
}


class CallFailed(grpc.RpcError):
    """A failure the cache service reported inside a reply (one update of a batch),
    handled as the failure of a call of its own."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def error_response(status: int, code: str, message: str, headers=None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _is_admin() -> bool:
    caller = current_app.extensions["access"].caller_of(request.headers.get("Authorization"))
    return caller is not None and caller.role == "admin"


def register(app):
    @app.errorhandler(ApiError)
    def api_error(exc):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(grpc.RpcError)
    def rpc_error(exc):
        status, code = GRPC_TO_HTTP.get(exc.code(), (500, "internal"))
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        message = exc.details() or exc.code().name
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            message = f"cache service unavailable: {message}"
        if status >= 500 and code != "resource_exhausted":
            # A failure of the services or stores names internal hosts, users and TLS
            # problems: in the log, and to administrators; others learn what to do. (Too
            # many pending writes says nothing internal, and how many.)
            current_app.extensions["limited_log"].log(logging.WARNING, ("failed", code), "%d to %s %r: %s",
                                                      status, request.method, request.path, message)
            if not _is_admin():
                message = SERVER_FAILURES.get(code, "the request failed; retry shortly")
        return error_response(status, code, message, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            message = f"{request.method} {request.path}: this URL takes {', '.join(exc.valid_methods)}"
        # The exception's own headers but its HTML Content-Type: a 405's Allow, for one.
        headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
        return error_response(exc.code or 500, code, message, headers)
