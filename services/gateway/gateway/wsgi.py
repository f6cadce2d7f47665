"""The WSGI app granian serves (gateway.serving): `gateway.wsgi:app`.

granian loads it in each worker after the fork, so each worker has its own gRPC channel
and sets tracing up here, with its own exporter. granian's workers do not run atexit
handlers when they stop; multiprocessing's finalizers do, so the spans still buffered
are sent then, and the worker's live metrics files are let go. It stops on SIGTERM from
granian's process (serving.worker_signals).
"""

import os
import sys
from multiprocessing.util import Finalize

from chinook import heap, tracing
from chinook.config import ConfigError, settings_or_exit
from chinook.entities import register_modules_or_exit
from chinook.logs import configure_logging
from chinook.metrics import mark_process_dead

from .app import create_app
from .serving import worker_signals


def _on_exit(pid: int):
    tracing.shutdown()
    mark_process_dead(pid)


worker_signals()
settings = settings_or_exit()
configure_logging("gateway", settings.log_level, settings.log_format)
tracing.setup("gateway")
Finalize(None, _on_exit, args=(os.getpid(),), exitpriority=0)
register_modules_or_exit(settings.entity_modules)
try:
    app = create_app(settings)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")
heap.freeze_startup_objects()
