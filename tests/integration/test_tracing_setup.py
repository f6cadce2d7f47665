"""tracing.setup() in a process of its own, as each service runs it: without an endpoint
nothing is installed; with one, spans reach an OTLP receiver over either protocol, under
the process' own name unless the standard variables give another."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from testkit.otlp import OtlpReceiver

OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                  "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                  "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED")

# What a service does at start, with every instrumentation, then what it left behind.
WITHOUT_ENDPOINT = textwrap.dedent("""
    import json, sys, threading
    from chinook import tracing
    on = tracing.setup("gateway", "celery", "psycopg2", "redis")
    import grpc
    from opentelemetry import trace
    from chinook.config import load_settings
    from chinook.grpc_client import make_channel
    from chinook.grpc_server import GrpcService
    from gateway.app import create_app
    channel = make_channel("127.0.0.1:1", ["chinook.cache.v1.CacheService"])
    service = GrpcService(0, ["chinook.cache.v1.CacheService"])
    threads = [t.name for t in threading.enumerate()]
    app = create_app(load_settings())
    print(json.dumps({
        "on": on,
        "provider": type(trace.get_tracer_provider()).__name__,
        "modules": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                                                                   "opentelemetry.instrumentation"))),
        "channel": type(channel).__module__,
        "server_interceptors": len(tracing.grpc_server_interceptors()),
        "threads": threads,
        "wsgi_app": [type(app.wsgi_app).__name__, app.wsgi_app.wsgi_app.__qualname__],
    }))
""")

ONE_SPAN = textwrap.dedent("""
    from opentelemetry import trace
    from chinook import tracing
    tracing.setup("cache-svc")
    with trace.get_tracer("test").start_as_current_span("probe"):
        pass
    tracing.shutdown()
""")


def run(script: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    environ.update(env, GATEWAY_NEAR_CACHE_ROWS="0")
    return subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60,
                          check=False)


def test_without_an_endpoint_nothing_is_installed():
    done = run(WITHOUT_ENDPOINT, OTEL_SERVICE_NAME="gateway", OTEL_TRACES_SAMPLER="always_on")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["on"] is False
    assert found["provider"] == "ProxyTracerProvider"
    assert found["modules"] == [], "no SDK, exporter or instrumentation is even imported"
    assert found["channel"] == "grpc._channel", "a plain channel, no interceptor"
    assert found["server_interceptors"] == 0
    assert found["threads"] == ["MainThread"], "no exporter thread"
    assert found["wsgi_app"] == ["DirectRows", "Flask.wsgi_app"], "the app is not wrapped in spans"


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.mark.parametrize("env, service, protocol", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "cache-svc", "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "cache-eu"}, "cache-eu", "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
      "OTEL_RESOURCE_ATTRIBUTES": "service.name=cache-us,deployment.environment=test"}, "cache-us", "http/protobuf"),
])
def test_spans_reach_the_endpoint_under_the_process_name_unless_told_otherwise(receiver, env, service, protocol):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    before = len(receiver.spans)
    done = run(ONE_SPAN, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, **env)
    assert done.returncode == 0, done.stderr
    # shutdown() exported the span before the process ended.
    probes = [s for s in receiver.spans[before:] if s.name == "probe"]
    assert [(s.service, s.protocol) for s in probes] == [(service, protocol)]


def test_the_traces_endpoint_and_the_sampler_come_from_the_standard_variables(receiver):
    before = len(receiver.spans)
    done = run(ONE_SPAN, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.http_endpoint}/v1/traces",
               OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SERVICE_NAME="sampled-in")
    assert done.returncode == 0, done.stderr
    assert [s.service for s in receiver.spans[before:]] == ["sampled-in"]
    done = run(ONE_SPAN, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint, OTEL_TRACES_SAMPLER="always_off",
               OTEL_SERVICE_NAME="sampled-out")
    assert done.returncode == 0, done.stderr
    assert "sampled-out" not in {s.service for s in receiver.spans}


def test_an_unknown_protocol_stops_the_process_naming_the_variable(receiver):
    done = run(ONE_SPAN, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    assert done.returncode == 1
    assert ("configuration error: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' must be one of grpc, http/protobuf"
            in done.stderr)
