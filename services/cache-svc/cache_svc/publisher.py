"""Publishes Celery tasks; the cache service never imports the workers' code."""

import logging

from kombu.exceptions import OperationalError

from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_ROWS_TASK, declare_queues, make_celery
from chinook.config import redact_url

log = logging.getLogger(__name__)
# Tries to reach RabbitMQ at start; reads must not wait for the broker.
CONNECT_RETRIES = 3


class TaskPublisher:
    def __init__(self, settings):
        self.celery = make_celery("cache-svc", settings)
        self.queue_type = settings.broker_queue_type

    def declare_queues(self):
        """Raises QueueTypeMismatch if a queue exists with another type. A broker that does
        not answer is only logged: publishing declares the queues once it does."""
        try:
            declare_queues(self.celery, self.queue_type, CONNECT_RETRIES)
        except OperationalError as exc:
            log.warning("RabbitMQ at %s does not answer (%s): the task queues' type is not checked now",
                        redact_url(self.celery.conf.broker_url), exc)

    def apply_writes(self, entity: str, rows: list):
        self.celery.send_task(APPLY_WRITES_TASK, args=[entity, rows])

    def duplicate_rows(self, entity: str, multiplier: int) -> str:
        return self.celery.send_task(DUPLICATE_ROWS_TASK, args=[entity, multiplier]).id

    def task_state(self, task_id: str):
        """(state, info) of a task from the result backend; unknown ids read as PENDING."""
        result = self.celery.AsyncResult(task_id)
        return result.state, result.info

    def ping(self):
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
