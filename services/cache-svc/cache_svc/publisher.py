"""Publishes Celery tasks; the cache service never imports the workers' code."""

from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_ROWS_TASK, declare_queues, make_celery


class TaskPublisher:
    def __init__(self, settings):
        self.celery = make_celery("cache-svc", settings)
        self.queue_type = settings.broker_queue_type

    def declare_queues(self):
        """Raises QueueTypeMismatch if a queue exists with another type."""
        declare_queues(self.celery, self.queue_type)

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
