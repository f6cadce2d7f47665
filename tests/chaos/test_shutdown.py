"""Graceful shutdown: SIGTERM makes a gRPC service report NOT_SERVING and exit within
its grace period, and a rolling restart of every process under load loses nothing."""

import signal
import threading
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chinook.grpc_client import CACHE_SERVICE, PERSISTENCE_SERVICE
from tests.chaos.test_faults import PROJECT_PROCESSES
from tests.chaos.workload import Workload

pytestmark = pytest.mark.chaos
GRACE_S = 20


@pytest.mark.parametrize("name, service, address", [
    ("cache-svc", CACHE_SERVICE, "cache_addr"),
    ("persistence-svc", PERSISTENCE_SERVICE, "persistence_addr"),
])
def test_sigterm_reports_not_serving_then_exits(chaos_stack, name, service, address):
    with chaos_stack.channel(getattr(chaos_stack, address)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
        # Serving first: a test before may have left a store restarting, and readiness
        # follows the store (the watch ends with DEADLINE_EXCEEDED if it never comes).
        assert any(update.status == health_pb2.HealthCheckResponse.SERVING for update in watch)
        chaos_stack.signal(name, signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert chaos_stack.processes[name].wait(GRACE_S) == 0
    chaos_stack.start(name)


@pytest.mark.slow
def test_rolling_restart_under_load_loses_nothing(chaos_stack, chaos_api, album_ids, report):
    workload = Workload(chaos_api, "rolling")
    workload.start_hot_writers()
    bulk = threading.Thread(target=workload.bulk, args=(album_ids, "bulk"), daemon=True)
    bulk.start()
    for name in PROJECT_PROCESSES:
        chaos_stack.signal(name, signal.SIGTERM)
        assert chaos_stack.processes[name].wait(GRACE_S) is not None
        chaos_stack.start(name)
    bulk.join(300)
    workload.stop_hot_writers()
    outcome = workload.verify()
    report(f"SIGTERM and restart of each process in turn under load (clients retried "
           f"{workload.client_errors} refused requests)", outcome.checked, len(outcome.lost))
    assert not outcome.lost


def health_of(stack, address, service):
    with stack.channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_a_store_outage_makes_a_service_unready_not_dead(stores, chaos_stack, chaos_api):
    serving = health_pb2.HealthCheckResponse.SERVING
    stores.redis.stop()
    try:
        deadline = time.monotonic() + 15
        while health_of(chaos_stack, chaos_stack.cache_addr, CACHE_SERVICE) == serving:
            assert time.monotonic() < deadline, "cache-svc stayed ready without Redis"
            time.sleep(0.2)
        assert health_of(chaos_stack, chaos_stack.cache_addr, "") == serving, "liveness must not follow the store"
        assert chaos_api.get("/readyz").status_code == 503
    finally:
        stores.redis.start()
    deadline = time.monotonic() + 15
    while health_of(chaos_stack, chaos_stack.cache_addr, CACHE_SERVICE) != serving:
        assert time.monotonic() < deadline, "cache-svc did not become ready again"
        time.sleep(0.2)
    assert chaos_api.get("/readyz").status_code == 200
