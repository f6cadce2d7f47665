"""Asks a gRPC service's standard health service, with this process' TLS settings:

    python -m chinook.health_check 127.0.0.1:50051 chinook.cache.v1.CacheService --server-name cache-svc
    python -m chinook.health_check 127.0.0.1:50051 --server-name cache-svc      # liveness ("")

The probe of compose and Kubernetes: with mutual TLS a server wants a client
certificate, which Kubernetes' native grpc probe cannot present. Health is open to any
certificate of the CA; with GRPC_TLS_DIR, --identity says whose to present. Exits 0 when
the service is SERVING; otherwise 1, saying why.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chinook.callers import SERVICE_HOSTS
from chinook.config import ConfigError, settings_or_exit
from chinook.grpc_client import make_channel
from chinook.tls import channel_credentials


def health_status(address: str, service: str, credentials=None, server_name: str | None = None,
                  timeout_s: float = 5.0) -> str:
    """The status name (SERVING, NOT_SERVING, ...) the server gives for service."""
    with make_channel(address, [], credentials, server_name) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Exits 0 when a gRPC service reports SERVING.")
    parser.add_argument("address", help="host:port of the server, e.g. 127.0.0.1:50051")
    parser.add_argument("service", nargs="?", default="",
                        help="the service name (readiness); empty asks for the process (liveness)")
    parser.add_argument("--server-name", help="the name the server's certificate carries, when the address "
                                              "is not it (with GRPC_TLS_* set)")
    parser.add_argument("--identity", choices=sorted(SERVICE_HOSTS),
                        help="the service whose certificate to present from GRPC_TLS_DIR")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    what = f"{args.address} {args.service or '(liveness)'}"
    try:
        credentials = channel_credentials(settings, args.identity)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    try:
        status = health_status(args.address, args.service, credentials, args.server_name, args.timeout)
    except grpc.RpcError as exc:
        sys.exit(f"{what}: {exc.code().name}: {exc.details()}")
    if status != "SERVING":
        sys.exit(f"{what}: {status}")
    print(f"{what}: SERVING")


if __name__ == "__main__":
    main()
