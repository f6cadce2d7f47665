"""gunicorn settings of the gateway (`--config python:gateway.gunicorn_conf`).

The address comes from GATEWAY_HOST (loopback unless set: compose and Kubernetes set
0.0.0.0) and GATEWAY_PORT, so the same command serves `make run`, compose and
Kubernetes. The access, allowed hosts and certificate settings are checked here, in the
master, so that a gateway that would be open beyond loopback, or has unusable tokens,
allowed hosts or certificates, does not start at all.
Each worker process counts its own requests; prometheus_client's multiprocess mode lets
any of them serve the sum. The folder must be set before the app is imported.
"""

import os
import sys
import tempfile

from chinook.config import ConfigError, read_tls_files, settings_or_exit
from gateway import IDENTITY
from gateway.auth import Access
from gateway.browsers import AllowedHosts

settings = settings_or_exit()
try:
    AllowedHosts.from_settings(settings, Access.from_settings(settings).anonymous_role)
    read_tls_files(settings, IDENTITY)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")

bind = f"{settings.gateway_host}:{settings.gateway_port}"

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def post_fork(server, worker):
    # In the worker, before it loads the app: an exporter's channel and the batch
    # processor's thread would not survive a fork, so the master never sets them up.
    from chinook import tracing

    tracing.setup("gateway")


def worker_exit(server, worker):
    from chinook import tracing

    tracing.shutdown()


def child_exit(server, worker):
    from chinook.metrics import mark_process_dead

    mark_process_dead(worker.pid)
