"""gunicorn settings of the gateway (`--config python:gateway.gunicorn_conf`).

The port comes from GATEWAY_PORT, so the same command serves `make run`, compose and
Kubernetes. Each worker process counts its own requests; prometheus_client's
multiprocess mode lets any of them serve the sum. The folder must be set before the
app is imported.
"""

import os
import tempfile

bind = f"0.0.0.0:{os.environ.get('GATEWAY_PORT') or 5000}"

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def child_exit(server, worker):
    from chinook.metrics import mark_process_dead

    mark_process_dead(worker.pid)
