"""The Celery app of both workers; which queue a worker serves is chosen by `-Q`:

    celery -A worker.celery_app worker -Q write_back_queue
    celery -A worker.celery_app worker -Q duplicate_queue
"""

import logging
import os
import random
import sys
import tempfile

# Prefork children write their metrics to files the main process serves; the folder
# must be known before prometheus_client is first imported.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="worker-metrics-")

from celery.signals import task_postrun, task_retry, worker_init, worker_process_init, worker_process_shutdown  # noqa: E402

from chinook import metrics  # noqa: E402
from chinook.celery_setup import (  # noqa: E402
    APPLY_WRITES_TASK, DUPLICATE_ROWS_TASK, QueueTypeMismatch, declare_queues, delay_in_whole_seconds, make_celery,
)
from chinook.config import settings_or_exit  # noqa: E402
from chinook.grpc_client import CacheClient, PersistenceClient  # noqa: E402
from chinook.logs import configure_logging  # noqa: E402
from chinook.tls import channel_credentials  # noqa: E402

from . import jobs  # noqa: E402

settings = settings_or_exit()
app = make_celery("worker", settings)
log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9103
DUPLICATE_TIMEOUT_S = 1800


class Clients:
    """gRPC clients of one worker process, created after the fork (grpc is not fork-safe)."""

    persistence: PersistenceClient | None = None
    cache: CacheClient | None = None


@worker_init.connect
def serve_metrics(**_):
    metrics.serve(settings.metrics_port or DEFAULT_METRICS_PORT, metrics.multiprocess_registry())


@worker_init.connect
def check_queues(**_):
    # Celery's own declaration would end in a traceback; this says which queue and how to migrate.
    try:
        declare_queues(app, settings.broker_queue_type)
    except QueueTypeMismatch as exc:
        sys.exit(f"worker: {exc}")


@worker_process_init.connect
def open_clients(**_):
    configure_logging("worker", settings.log_level)
    credentials = channel_credentials(settings)
    Clients.persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s, credentials)
    Clients.cache = CacheClient(settings.cache_svc_addr, settings.grpc_timeout_s, credentials)


@worker_process_shutdown.connect
def close_clients(**_):
    for client in (Clients.persistence, Clients.cache):
        if client is not None:
            client.close()
    metrics.mark_process_dead(os.getpid())


@task_retry.connect
def count_retry(sender=None, **_):
    metrics.TASK_RETRIES.labels(sender.name).inc()


@task_postrun.connect
def count_handled(sender=None, state=None, **_):
    metrics.TASKS_HANDLED.labels(sender.name, state or "UNKNOWN").inc()


# An exception would still ack the message: transient failures are retried with
# exponential backoff and jitter. After the last retry the task gives up safely: its
# rows are still dirty in the cache, and their lease brings them back.
RETRY = dict(autoretry_for=(jobs.TransientError,), max_retries=8, retry_backoff=1, retry_backoff_max=30,
             retry_jitter=True)


@app.task(name=APPLY_WRITES_TASK, bind=True, ignore_result=True, **RETRY)
def apply_writes(self, entity: str, rows: list, refusals: int = 0):
    outcome = jobs.apply_writes(Clients.persistence, Clients.cache, entity, rows)
    if outcome.refused:
        refusals += 1
        if refusals < settings.writeback_max_attempts:
            # Only the refused rows are tried again, later; the rest of the batch is durable.
            backoff_s = random.uniform(0, settings.writeback_retry_backoff_ms * 2**refusals) / 1000
            countdown = delay_in_whole_seconds(backoff_s)
            raise self.retry(args=[entity, [row for row, _ in outcome.refused]], kwargs={"refusals": refusals},
                             countdown=countdown, max_retries=None)
        jobs.dead_letter(Clients.cache, entity, outcome.refused)
    return {"written": outcome.written, "stale": outcome.stale, "refused": len(outcome.refused)}


@app.task(name=DUPLICATE_ROWS_TASK, bind=True, **RETRY)
def duplicate_rows(self, entity: str, multiplier: int):
    def report(done, total):
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    return jobs.duplicate_rows(Clients.persistence, entity, multiplier, self.request.id, report, DUPLICATE_TIMEOUT_S)
