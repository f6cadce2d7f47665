"""Celery settings shared by the publisher (cache-svc) and the workers.

Celery's defaults lose work: a message is acked before its task runs and a killed
worker's task is gone. These settings ack after the task ran, requeue the task of a
worker that died, hand out one message at a time, and wait for the broker to
confirm every publish.
"""

from celery import Celery

WRITE_BACK_QUEUE = "write_back_queue"
DUPLICATE_QUEUE = "duplicate_queue"
APPLY_WRITES_TASK = "chinook.write_back.apply_writes"
DUPLICATE_ROWS_TASK = "chinook.duplication.duplicate_rows"


def make_celery(name: str, settings) -> Celery:
    app = Celery(name, broker=settings.broker_url, backend=settings.celery_result_backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        task_routes={
            APPLY_WRITES_TASK: {"queue": WRITE_BACK_QUEUE},
            DUPLICATE_ROWS_TASK: {"queue": DUPLICATE_QUEUE},
        },
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
    )
    return app
