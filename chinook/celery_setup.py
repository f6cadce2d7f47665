"""Celery settings shared by the publisher (cache-svc) and the workers.

Celery's defaults lose work: a message is acked before its task runs and a killed
worker's task is gone. These settings ack after the task ran, requeue the task of a
worker that died, hand out one message at a time, and wait for the broker to
confirm every publish.

The two queues are quorum queues by default (BROKER_QUEUE_TYPE): replicated, and
durable on a single node. Quorum queues have no global QoS, which Celery detects, and
no per-message TTL, so a countdown goes through kombu's native delayed delivery, which
forwards the message through a topic exchange when it is due.

Each process declares the queues, their exchange and delayed delivery, unless
BROKER_PREDECLARED says the broker's definitions did (compose and Kubernetes, whose
broker accounts may not declare them): then it only looks for the queues.
"""

import logging
import threading
import time

from amqp.exceptions import NotFound, PreconditionFailed
from celery import Celery, Task
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from chinook.config import redact_url

log = logging.getLogger(__name__)

WRITE_BACK_QUEUE = "write_back_queue"
DUPLICATE_QUEUE = "duplicate_queue"
APPLY_WRITES_TASK = "chinook.write_back.apply_writes"
DUPLICATE_ROWS_TASK = "chinook.duplication.duplicate_rows"
# Topic, not direct: native delayed delivery forwards due messages only to topic exchanges.
TASK_EXCHANGE = "chinook.tasks"
QUEUE_TYPES = ("quorum", "classic")
# While the broker refuses a task queue (it exists with the other type), a process declares
# it again this often, and goes on once an operator has migrated it.
QUEUE_TYPE_RECHECK_S = 15.0
# How often a lasting refusal is logged again.
QUEUE_TYPE_LOG_EVERY_S = 60.0


class QueueRefused(Exception):
    """Task queues the broker does not offer as this process needs them; the message says
    what to do, summary says it in one line."""

    def __init__(self, message: str, queue_names: list[str]):
        super().__init__(message)
        self.queue_names = queue_names


class QueueTypeMismatch(QueueRefused):
    """Queues exist on the broker with another type than BROKER_QUEUE_TYPE; the message
    says how to migrate them."""

    @property
    def summary(self) -> str:
        return (f"RabbitMQ holds {' and '.join(self.queue_names)} with a type other than BROKER_QUEUE_TYPE: no "
                "task is sent there before a migration (cache-svc's log says how)")


class QueueMissing(QueueRefused):
    """BROKER_PREDECLARED: queues the broker's definitions should have declared are not there."""

    @property
    def summary(self) -> str:
        return (f"RabbitMQ has no {' and '.join(self.queue_names)}, which its definitions declare "
                "(BROKER_PREDECLARED): no task is sent there until they exist")


# The queue each task goes to.
TASK_QUEUES = {APPLY_WRITES_TASK: WRITE_BACK_QUEUE, DUPLICATE_ROWS_TASK: DUPLICATE_QUEUE}


class RetriedThroughItsQueue(Task):
    """A task whose retries go to its own queue, through the task exchange. Celery sends a
    retry to the exchange its message arrived by: after native delayed delivery, one of the
    delay exchanges, which the workers' broker account may not publish to. The broker then
    refused a retry at once that followed a delayed one, and the task was dropped, its rows
    left to wait for their lease and to count their tries anew."""

    def signature_from_request(self, request=None, args=None, kwargs=None, queue=None, **options):
        return super().signature_from_request(request, args, kwargs, queue=queue or TASK_QUEUES.get(self.name),
                                              **options)


def task_queues(queue_type: str, predeclared: bool = False) -> list[Queue]:
    """predeclared: the broker's definitions declare the queues and their exchange, so
    kombu never does (on publishing, consuming or declare_queues)."""
    exchange = Exchange(TASK_EXCHANGE, type="topic", no_declare=predeclared)
    return [Queue(name, exchange, routing_key=name, queue_arguments={"x-queue-type": queue_type},
                  no_declare=predeclared)
            for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE)]


def make_celery(name: str, settings) -> Celery:
    app = Celery(name, broker=settings.broker_url, backend=settings.celery_result_backend,
                 task_cls=RetriedThroughItsQueue)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_queues=task_queues(settings.broker_queue_type, settings.broker_predeclared),
        # Quorum queues refuse a global prefetch limit: the worker sets it per consumer.
        worker_detect_quorum_queues=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        task_routes={task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
    )
    return app


def declare_queues(app: Celery, queue_type: str, connect_retries: int | None = None,
                   queue_names: list[str] | None = None):
    """Declares the task queues (those named, or all) as BROKER_QUEUE_TYPE wants them. The
    broker refuses a queue whose type differs from the existing one of that name: then
    raises QueueTypeMismatch naming every refused queue and how to migrate, rather than
    leaving publishing or consuming to fail in a traceback. A queue this process may not
    declare (BROKER_PREDECLARED) is only looked for: QueueMissing names those not there,
    whose tasks a publish would drop unrouted. Waits for the broker up to connect_retries
    times (None: for ever), then raises kombu's OperationalError."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=connect_retries)
        refusals, missing = {}, []
        for queue in app.amqp.queues.values():
            if queue_names is not None and queue.name not in queue_names:
                continue
            # The broker closes the channel of a declaration it refuses: one channel each.
            with connection.channel() as channel:
                try:
                    if queue.no_declare:
                        channel.queue_declare(queue=queue.name, passive=True)
                    else:
                        queue.bind(channel).declare()
                except PreconditionFailed as exc:
                    refusals[queue.name] = exc.reply_text
                except NotFound:
                    missing.append(queue.name)
        if refusals:
            raise QueueTypeMismatch(migration_message(queue_type, connection.virtual_host, refusals),
                                    list(refusals))
        if missing:
            raise QueueMissing(missing_message(connection.virtual_host, missing), missing)


def migration_message(queue_type: str, vhost: str, refusals: dict[str, str]) -> str:
    """What to do about queues the broker refuses as queue_type ({name: the broker's reply})."""
    other = next(t for t in QUEUE_TYPES if t != queue_type)
    if len(refusals) == 1:
        queues, exist, it, is_ = "queue", "a queue of that name already exists", "it", "is"
    else:
        queues, exist, it, is_ = "queues", "queues of these names already exist", "them", "are"
    names = " and ".join(repr(name) for name in refusals)
    deletes = " and ".join(f"`rabbitmqctl delete_queue -p {vhost} {name} --if-empty`" for name in refusals)
    return (
        f"RabbitMQ refuses the {queue_type} {queues} {names} in vhost {vhost!r}: {exist} with other "
        f"arguments ({'; '.join(refusals.values())}). Until {it} {is_} migrated, this process sends no task "
        f"to {it} and takes none from {it}, and declares {it} again every {QUEUE_TYPE_RECHECK_S:.0f} s. "
        f"Keep {it} with BROKER_QUEUE_TYPE={other}, or migrate {it}: stop the cache-svc processes running "
        f"with BROKER_QUEUE_TYPE={other}, let workers running with BROKER_QUEUE_TYPE={other} drain {it}, stop "
        f"those workers, then delete {it} with {deletes}; the processes running with BROKER_QUEUE_TYPE={queue_type} "
        f"go on by themselves")


def missing_message(vhost: str, names: list[str]) -> str:
    """What to do about task queues the broker's definitions should have declared."""
    listed = " and ".join(repr(name) for name in names)
    return (f"RabbitMQ has no task queue {listed} in vhost {vhost!r}. With BROKER_PREDECLARED=true the broker's "
            "definitions declare the task queues (k8s/backing-services/rabbitmq-definitions.json, loaded at its "
            "start), since this process' account may not. Until they are there, this process sends no task to "
            f"them and takes none from them, and looks again every {QUEUE_TYPE_RECHECK_S:.0f} s. Start the broker "
            "with its definitions, or set BROKER_PREDECLARED=false where the account may declare queues")


class QueueTypeWatch:
    """Declares task queues until the broker takes them as BROKER_QUEUE_TYPE wants them.

    A queue left with the other type (by an older version) must be migrated by an
    operator, a missing one declared by the broker's definitions; a process that stopped
    over it would be restarted in a loop by compose or Kubernetes. Instead the process
    holds back what would go into or out of a refused queue, and declares the queues
    again every QUEUE_TYPE_RECHECK_S, in a thread, until the broker takes them all; then
    on_declared runs (in that thread).
    """

    def __init__(self, app: Celery, queue_type: str, queue_names: list[str], on_declared=None,
                 connect_retries: int | None = None, log_every_s: float | None = QUEUE_TYPE_LOG_EVERY_S):
        """log_every_s: how often a lasting refusal is logged again; None leaves logging it
        to the caller (cache-svc's readiness probe)."""
        self.app = app
        self.queue_type = queue_type
        self.queue_names = queue_names
        self.on_declared = on_declared
        self.connect_retries = connect_retries
        self.log_every_s = log_every_s
        # The latest refusal, while one lasts.
        self.refusal: QueueRefused | None = None
        self._logged_at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-type-watch", daemon=True)

    def refuses(self, queue_name: str) -> bool:
        refusal = self.refusal
        return refusal is not None and queue_name in refusal.queue_names

    def check(self) -> bool:
        """Declares the queues once; True when the broker took them all."""
        try:
            declare_queues(self.app, self.queue_type, self.connect_retries, self.queue_names)
        except QueueRefused as exc:
            self._log_refusal(exc)
            self.refusal = exc
            return False
        except OperationalError as exc:
            log.warning("RabbitMQ at %s does not answer (%s): the type of the task queues is not checked now; "
                        "again in %.0f s", redact_url(self.app.conf.broker_url), exc, QUEUE_TYPE_RECHECK_S)
            return False
        if self.on_declared is not None:
            try:
                self.on_declared()
            except Exception as exc:  # noqa: BLE001 - declared again, and tried again, at the next check
                log.warning("cannot go on with the task queues (%s: %s); again in %.0f s",
                            type(exc).__name__, exc, QUEUE_TYPE_RECHECK_S)
                return False
        if self.refusal is not None:
            log.info("RabbitMQ takes the %s queues %s now: going on", self.queue_type, ", ".join(self.queue_names))
            self.refusal = None
        return True

    def start(self):
        """Checks again every QUEUE_TYPE_RECHECK_S, in a thread, until check() succeeds."""
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.wait(QUEUE_TYPE_RECHECK_S):
            if self.check():
                return

    def _log_refusal(self, refusal: QueueRefused):
        if self.log_every_s is None:
            return
        now = time.monotonic()
        changed = self.refusal is None or self.refusal.queue_names != refusal.queue_names
        if changed or now - self._logged_at >= self.log_every_s:
            log.warning("%s", refusal)
            self._logged_at = now


def delay_in_whole_seconds(countdown: float) -> int:
    """A retry's countdown as native delayed delivery takes it: kombu counts whole seconds
    and refuses a positive countdown under one, so it is rounded (0 means at once)."""
    return round(countdown)
