"""Publishes Celery tasks; the cache service never imports the workers' code."""

from chinook.celery_setup import (
    APPLY_WRITES_TASK,
    DUPLICATE_QUEUE,
    DUPLICATE_ROWS_TASK,
    WRITE_BACK_QUEUE,
    QueueTypeWatch,
    make_celery,
)

# Tries to reach RabbitMQ at start; reads must not wait for the broker.
CONNECT_RETRIES = 3


class TaskPublisher:
    def __init__(self, settings):
        self.celery = make_celery("cache-svc", settings)
        # The readiness probe reports a refused queue (check_queue_types), every 30 s.
        self.queues = QueueTypeWatch(self.celery, settings.broker_queue_type, [WRITE_BACK_QUEUE, DUPLICATE_QUEUE],
                                     connect_retries=CONNECT_RETRIES, log_every_s=None)

    def declare_queues(self):
        """Declares the task queues. If RabbitMQ refuses one (it exists with the other
        type) or does not answer, declares them again in the background until it takes
        them; meanwhile tasks for a refused queue are held back."""
        if not self.queues.check():
            self.queues.start()

    def check_queue_types(self):
        """Raises QueueTypeMismatch (with how to migrate) or QueueMissing while RabbitMQ
        refuses a task queue."""
        refusal = self.queues.refusal
        if refusal is not None:
            raise type(refusal)(str(refusal), refusal.queue_names)

    def holds_back_writes(self) -> bool:
        """True while write_back_queue exists with the other type, or not at all: write-back
        tasks would not reach it (the broker refuses the declaration a publish makes, or
        drops the task unrouted), so the flusher leaves the rows pending in Redis."""
        return self.queues.refuses(WRITE_BACK_QUEUE)

    def apply_writes(self, entity: str, rows_json: str, claim: str, links: list[str] = (), links_dropped: int = 0):
        """rows_json: the rows as columnar JSON (chinook.entities.Entity.columns_json).
        claim: the claim id the rows were claimed under, which the worker's
        acknowledgement names. links: the span contexts the task's flush span links to
        (chinook.tracing), and how many more were left out; sent only when there are some."""
        self._check_queue(WRITE_BACK_QUEUE)
        kwargs = {"claim": claim}
        if links:
            kwargs.update(links=list(links), links_dropped=links_dropped)
        self.celery.send_task(APPLY_WRITES_TASK, args=[entity, rows_json], kwargs=kwargs)

    def duplicate_rows(self, entity: str, multiplier: int) -> str:
        self._check_queue(DUPLICATE_QUEUE)
        return self.celery.send_task(DUPLICATE_ROWS_TASK, args=[entity, multiplier]).id

    def task_state(self, task_id: str):
        """(state, info) of a task from the result backend; unknown ids read as PENDING."""
        result = self.celery.AsyncResult(task_id)
        return result.state, result.info

    def ping(self):
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)

    def close(self):
        self.queues.stop()

    def _check_queue(self, name: str):
        if self.queues.refuses(name):
            self.check_queue_types()
