"""The routes of the process itself, open to anyone: liveness, readiness and the
Prometheus metrics."""

import logging
import os

import grpc
from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from chinook import metrics

from . import errors
from .auth import RANK
from .extensions import cache, limited_log
from .request_hooks import requires

service = Blueprint("service", __name__)


@service.get("/healthz")
@requires("none")
def healthz():
    return jsonify({"status": "ok"})


@service.get("/readyz")
@requires("none")
def readyz():
    try:
        problem = None if cache().is_serving() else "cache service is not serving"
    except grpc.RpcError as exc:
        problem = f"cache service unreachable: {exc.details()}"
    if problem is None:
        return jsonify({"status": "ready"})
    limited_log().log(logging.WARNING, ("readyz", problem), "not ready: %s", problem)
    # The details name internal addresses and TLS failures: for callers who may read data only.
    caller = current_app.extensions["access"].caller_of(request.headers.get("Authorization"))
    may_read = caller is not None and RANK[caller.role] >= RANK["reader"]
    return errors.error_response(503, "unavailable", problem if may_read else "not ready")


@service.get("/metrics")
@requires("none")
def prometheus_metrics():
    registry = metrics.multiprocess_registry() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
