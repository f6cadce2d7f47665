"""Starts the persistence service: `python -m persistence_svc`."""

from chinook import heap, metrics, tracing
from chinook.config import settings_or_exit
from chinook.entities import register_modules_or_exit
from chinook.grpc_client import PERSISTENCE_SERVICE
from chinook.grpc_server import GrpcService, listening_credentials
from chinook.logs import configure_logging
from chinook.persistence.v1 import persistence_pb2_grpc

from .db import Database
from .servicer import PersistenceServicer

MAX_WORKERS = 16
DEFAULT_METRICS_PORT = 9102
# Whose certificate it presents under GRPC_TLS_DIR.
IDENTITY = "persistence-svc"


def main():
    settings = settings_or_exit()
    configure_logging("persistence-svc", settings.log_level, settings.log_format)
    register_modules_or_exit(settings.entity_modules)
    # Before anything connects: a server that may not listen as configured stops here.
    credentials = listening_credentials(settings, IDENTITY)
    # Before the pool opens a connection: the instrumentation wraps psycopg2.connect.
    tracing.setup("persistence-svc", "psycopg2")
    # Two spare connections for the health probe and a stream that outlives its call.
    db = Database(settings.database_url, max_connections=MAX_WORKERS + 2)
    metrics.serve(settings.metrics_port or DEFAULT_METRICS_PORT, settings.metrics_host)
    service = GrpcService(settings.persistence_grpc_port, [PERSISTENCE_SERVICE], probe=db.ping,
                          max_workers=MAX_WORKERS, credentials=credentials, host=settings.grpc_host)
    persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(PersistenceServicer(db), service.server)
    service.on_stop(db.close)
    service.on_stop(tracing.shutdown)
    heap.freeze_startup_objects()
    service.serve_forever()


if __name__ == "__main__":
    main()
