"""Celery settings shared by the publisher (cache-svc) and the workers.

Celery's defaults lose work: a message is acked before its task runs and a killed
worker's task is gone. These settings ack after the task ran, requeue the task of a
worker that died, hand out one message at a time, and wait for the broker to
confirm every publish.

The two queues are quorum queues by default (BROKER_QUEUE_TYPE): replicated, and
durable on a single node. Quorum queues have no global QoS, which Celery detects, and
no per-message TTL, so a countdown goes through kombu's native delayed delivery, which
forwards the message through a topic exchange when it is due.
"""

from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Exchange, Queue

WRITE_BACK_QUEUE = "write_back_queue"
DUPLICATE_QUEUE = "duplicate_queue"
APPLY_WRITES_TASK = "chinook.write_back.apply_writes"
DUPLICATE_ROWS_TASK = "chinook.duplication.duplicate_rows"
# Topic, not direct: native delayed delivery forwards due messages only to topic exchanges.
TASK_EXCHANGE = "chinook.tasks"
QUEUE_TYPES = ("quorum", "classic")


class QueueTypeMismatch(Exception):
    """A queue exists on the broker with another type than BROKER_QUEUE_TYPE; the message
    says how to migrate."""


def task_queues(queue_type: str) -> list[Queue]:
    exchange = Exchange(TASK_EXCHANGE, type="topic")
    return [Queue(name, exchange, routing_key=name, queue_arguments={"x-queue-type": queue_type})
            for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE)]


def make_celery(name: str, settings) -> Celery:
    app = Celery(name, broker=settings.broker_url, backend=settings.celery_result_backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_queues=task_queues(settings.broker_queue_type),
        # Quorum queues refuse a global prefetch limit: the worker sets it per consumer.
        worker_detect_quorum_queues=True,
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


def declare_queues(app: Celery, queue_type: str, connect_retries: int | None = None):
    """Declares the task queues as BROKER_QUEUE_TYPE wants them, at start: the broker
    refuses a queue whose type differs from the existing one of that name, and the
    process had better stop with how to migrate than fail every publish or end in a
    traceback. Waits for the broker up to connect_retries times (None: for ever), then
    raises kombu's OperationalError."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=connect_retries)
        vhost = connection.virtual_host
        for queue in app.amqp.queues.values():
            try:
                queue.bind(connection.default_channel).declare()
            except PreconditionFailed as exc:
                other = next(t for t in QUEUE_TYPES if t != queue_type)
                raise QueueTypeMismatch(
                    f"RabbitMQ refuses the {queue_type} queue {queue.name!r} in vhost {vhost!r}: a queue of that "
                    f"name already exists with other arguments ({exc.reply_text}). Keep it with "
                    f"BROKER_QUEUE_TYPE={other}, or migrate it: stop cache-svc, let workers running with "
                    f"BROKER_QUEUE_TYPE={other} drain it, stop them, delete it with "
                    f"`rabbitmqctl delete_queue -p {vhost} {queue.name}`, then start everything with "
                    f"BROKER_QUEUE_TYPE={queue_type}") from None


def delay_in_whole_seconds(countdown: float) -> int:
    """A retry's countdown as native delayed delivery takes it: kombu counts whole seconds
    and refuses a positive countdown under one, so it is rounded (0 means at once)."""
    return round(countdown)
