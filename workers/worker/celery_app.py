"""The Celery app of both workers; which queue a worker serves is chosen by `-Q`:

    celery -A worker.celery_app worker -Q write_back_queue
    celery -A worker.celery_app worker -Q duplicate_queue
"""

import logging

from celery.signals import worker_process_init, worker_process_shutdown

from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_ROWS_TASK, make_celery
from chinook.config import settings_or_exit
from chinook.grpc_client import CacheClient, PersistenceClient
from chinook.logs import configure_logging

from . import jobs

settings = settings_or_exit()
app = make_celery("worker", settings)
log = logging.getLogger(__name__)

DUPLICATE_TIMEOUT_S = 1800


class Clients:
    """gRPC clients of one worker process, created after the fork (grpc is not fork-safe)."""

    persistence: PersistenceClient | None = None
    cache: CacheClient | None = None


@worker_process_init.connect
def open_clients(**_):
    configure_logging("worker", settings.log_level)
    Clients.persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s)
    Clients.cache = CacheClient(settings.cache_svc_addr, settings.grpc_timeout_s)


@worker_process_shutdown.connect
def close_clients(**_):
    for client in (Clients.persistence, Clients.cache):
        if client is not None:
            client.close()


# An exception would still ack the message: transient failures are retried with
# exponential backoff and jitter, without limit, since the rows stay dirty in the
# cache anyway and a lease brings them back should the task be dropped.
RETRY = dict(autoretry_for=(jobs.TransientError,), retry_backoff=1, retry_backoff_max=30, retry_jitter=True)


@app.task(name=APPLY_WRITES_TASK, ignore_result=True, max_retries=None, **RETRY)
def apply_writes(entity: str, rows: list):
    return jobs.apply_writes(Clients.persistence, Clients.cache, entity, rows)


@app.task(name=DUPLICATE_ROWS_TASK, bind=True, max_retries=10, **RETRY)
def duplicate_rows(self, entity: str, multiplier: int):
    def report(done, total):
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    return jobs.duplicate_rows(Clients.persistence, entity, multiplier, self.request.id, report, DUPLICATE_TIMEOUT_S)
