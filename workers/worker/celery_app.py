"""The Celery app of both workers; which queue a worker serves is chosen by `-Q`:

    celery -A worker.celery_app worker -Q write_back_queue
    celery -A worker.celery_app worker -Q duplicate_queue
"""

import logging
import os
import random
import sys
import tempfile
from typing import ClassVar

# Prefork children write their metrics to files the main process serves; the folder
# must be known before prometheus_client is first imported.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="worker-metrics-")

from celery.signals import (
    celeryd_after_setup,
    task_postrun,
    task_retry,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.worker.consumer import Consumer
from kombu.transport.native_delayed_delivery import bind_queue_to_native_delayed_delivery_exchange

from chinook import heap, metrics, tracing
from chinook.celery_setup import (
    APPLY_WRITES_TASK,
    DUPLICATE_QUEUE,
    DUPLICATE_ROWS_TASK,
    WRITE_BACK_QUEUE,
    QueueTypeWatch,
    delay_in_whole_seconds,
    make_celery,
)
from chinook.config import ConfigError, read_tls_files, settings_or_exit
from chinook.entities import get_entity, register_modules_or_exit
from chinook.grpc_client import CacheClient, PersistenceClient
from chinook.logs import configure_logging
from chinook.tls import channel_credentials

from . import jobs
from .task_arguments import MalformedTask, check_apply_writes, check_duplicate_rows

settings = settings_or_exit()
register_modules_or_exit(settings.entity_modules)
app = make_celery("worker", settings)
log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9103
# Whose certificate both workers present under GRPC_TLS_DIR, and who they are to the servers.
IDENTITY = "workers"
# Checked here, in the main process: the children read the files only after the fork.
try:
    read_tls_files(settings, IDENTITY)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")
DUPLICATE_TIMEOUT_S = 1800


class PredeclaredConsumer(Consumer):
    """Celery's consumer without its DelayedDelivery step, which declares delayed
    delivery's exchanges and queues and binds the task queues to them: with
    BROKER_PREDECLARED the broker's definitions did, and this worker's account may not."""

    class Blueprint(Consumer.Blueprint):
        default_steps: ClassVar[list[str]] = [
            step for step in Consumer.Blueprint.default_steps if not step.endswith(":DelayedDelivery")]


if settings.broker_predeclared:
    app.conf.worker_consumer = f"{__name__}:PredeclaredConsumer"


class Clients:
    """gRPC clients of one worker process, created after the fork (grpc is not fork-safe)."""

    persistence: PersistenceClient | None = None
    cache: CacheClient | None = None


@worker_init.connect
def serve_metrics(**_):
    metrics.serve(settings.metrics_port or DEFAULT_METRICS_PORT, settings.metrics_host, metrics.multiprocess_registry())


class HeldBack:
    """Queues RabbitMQ refused at start with BROKER_QUEUE_TYPE (a queue of that name has the
    other type), until an operator migrates them, and those of them this worker consumes."""

    watch: ClassVar[QueueTypeWatch | None] = None
    refused: ClassVar[list[str]] = []
    consumed: ClassVar[list[str]] = []


@celeryd_after_setup.connect
def check_queues(**_):
    # After -Q took effect, before the consumer starts. Celery's own declaration would end
    # in a traceback and the process; a refused queue is consumed from once it is migrated,
    # and meanwhile the worker stays up (its liveness probe answers) without consuming it.
    # Every task queue, not only the consumed ones: delayed delivery binds them all.
    watch = QueueTypeWatch(app, settings.broker_queue_type, list(app.amqp.queues))
    # It waits for the broker: False means a refusal.
    if not watch.check():
        HeldBack.watch = watch
        HeldBack.refused = watch.refusal.queue_names
        HeldBack.consumed = [name for name in HeldBack.refused if name in app.amqp.queues.consume_from]
        app.amqp.queues.deselect(HeldBack.consumed)


@worker_ready.connect
def recheck_refused_queues(sender, **_):
    if HeldBack.watch is None:
        return

    def go_on():
        if settings.broker_queue_type == "quorum" and not settings.broker_predeclared:
            # Celery's DelayedDelivery step bound the old queues at start; countdowns need
            # the new ones bound the same way.
            with app.connection_for_write() as connection:
                for name in HeldBack.refused:
                    bind_queue_to_native_delayed_delivery_exchange(connection, app.amqp.queues[name])
        for name in HeldBack.consumed:
            # As Celery's add_consumer control command does: in the consumer's event loop.
            sender.call_soon(sender.add_task_queue, name)

    HeldBack.watch.on_declared = go_on
    HeldBack.watch.start()


def service_name() -> str:
    """What this worker is, after the queues it serves (-Q): write-back-worker,
    duplication-worker, or worker when it serves both or neither."""
    queues = set(app.amqp.queues.consume_from or ()) | set(HeldBack.consumed)
    if queues == {WRITE_BACK_QUEUE}:
        return "write-back-worker"
    if queues == {DUPLICATE_QUEUE}:
        return "duplication-worker"
    return "worker"


@worker_process_init.connect
def open_clients(**_):
    # In each prefork child, after the fork: its own exporter thread and channels.
    name = service_name()
    configure_logging(name, settings.log_level, settings.log_format)
    tracing.setup(name, "celery")
    credentials = channel_credentials(settings, IDENTITY)
    Clients.persistence = PersistenceClient(settings.persistence_svc_addr, settings.grpc_timeout_s, credentials)
    Clients.cache = CacheClient(settings.cache_svc_addr, settings.grpc_timeout_s, credentials)
    heap.freeze_startup_objects()


@worker_process_shutdown.connect
def close_clients(**_):
    for client in (Clients.persistence, Clients.cache):
        if client is not None:
            client.close()
    tracing.shutdown()
    metrics.mark_process_dead(os.getpid())


@task_retry.connect
def count_retry(sender=None, reason=None, **_):
    metrics.TASK_RETRIES.labels(sender.name).inc()
    tracing.add_event("retry", reason=str(reason))


@task_postrun.connect
def count_handled(sender=None, state=None, **_):
    metrics.TASKS_HANDLED.labels(sender.name, state or "UNKNOWN").inc()


# An exception would still ack the message: transient failures are retried with
# exponential backoff and jitter. After the last retry the task gives up safely: its
# rows are still dirty in the cache, and their lease brings them back. A malformed task
# fails at once, an expected failure (logged without a traceback): retrying it would
# change nothing.
RETRY = {"autoretry_for": (jobs.TransientError,), "max_retries": 8, "retry_backoff": 1, "retry_backoff_max": 30,
         "retry_jitter": True, "throws": (MalformedTask,)}


def refuse_malformed(task, check, *arguments):
    """Returns check(*arguments); a malformed task is logged with what is wrong, and fails."""
    try:
        return check(*arguments)
    except MalformedTask as exc:
        log.warning("refused malformed task %s[%s]: %s; nothing done", task.name, task.request.id, exc)
        raise


@app.task(name=APPLY_WRITES_TASK, bind=True, ignore_result=True, **RETRY)
def apply_writes(self, entity: str, rows: str, refusals: int = 0, links: list = (), links_dropped: int = 0,
                 claim: str | None = None):
    """rows: the rows as columnar JSON (chinook.entities.Entity.columns_json), which goes on
    to persistence-svc as it is. claim: the claim id the rows were claimed under, which the acknowledgement names.
    links: the span contexts of the writes' accepting spans, which the flush span links
    to while tracing is on (chinook.tracing), and how many were left out."""
    columns = refuse_malformed(self, check_apply_writes, entity, rows, claim, refusals, links, links_dropped,
                               settings.writeback_max_attempts)
    countdown = None
    with tracing.flush_span(entity, len(columns["id"]), links, links_dropped) as span:
        outcome = jobs.apply_writes(Clients.persistence, Clients.cache, entity, rows, columns, claim)
        tracing.mark_flushed(span, entity, links, outcome.written, len(outcome.refused))
        if outcome.refused:
            refusals += 1
            if refusals < settings.writeback_max_attempts:
                # Only the refused rows are tried again, later; the rest of the batch is durable.
                backoff_s = random.uniform(0, settings.writeback_retry_backoff_ms * 2**refusals) / 1000
                countdown = delay_in_whole_seconds(backoff_s)
                span.add_event("retry refused rows", {"chinook.rows": len(outcome.refused),
                                                      "chinook.attempt": refusals, "chinook.countdown_s": countdown})
            else:
                span.add_event("dead-letter", {"chinook.rows": len(outcome.refused),
                                               "chinook.first_error": outcome.refused[0][1]})
                jobs.dead_letter(Clients.cache, entity, outcome.refused, claim)
    if countdown is not None:
        # Outside the flush span: the retry's message carries the task's trace context. It
        # keeps the claim: if the lease ended meanwhile and the rows were claimed again,
        # its acknowledgement changes nothing and the newer claim's flush cleans them.
        raise self.retry(args=[entity, get_entity(entity).columns_json(row for row, _ in outcome.refused)],
                         kwargs={"refusals": refusals, "claim": claim}, countdown=countdown, max_retries=None)
    return {"written": outcome.written, "stale": outcome.stale, "refused": len(outcome.refused)}


@app.task(name=DUPLICATE_ROWS_TASK, bind=True, **RETRY)
def duplicate_rows(self, entity: str, multiplier: int):
    refuse_malformed(self, check_duplicate_rows, entity, multiplier)

    def report(done, total):
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    return jobs.duplicate_rows(Clients.persistence, entity, multiplier, self.request.id, report, DUPLICATE_TIMEOUT_S)
