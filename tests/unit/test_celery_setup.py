import pytest
from celery.app.task import Context

from chinook.celery_setup import (
    APPLY_WRITES_TASK,
    DUPLICATE_QUEUE,
    DUPLICATE_ROWS_TASK,
    TASK_EXCHANGE,
    WRITE_BACK_QUEUE,
    delay_in_whole_seconds,
    make_celery,
)
from chinook.config import load_settings


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_both_queues_of_the_configured_type_on_a_topic_exchange(queue_type):
    queues = make_celery("test", load_settings({"BROKER_QUEUE_TYPE": queue_type})).amqp.queues
    assert set(queues) == {WRITE_BACK_QUEUE, DUPLICATE_QUEUE}
    for name, queue in queues.items():
        assert queue.queue_arguments == {"x-queue-type": queue_type} and queue.durable
        # Native delayed delivery forwards due messages through topic exchanges only.
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (TASK_EXCHANGE, "topic", name)


@pytest.mark.parametrize("countdown, delay", [(0.0, 0), (0.4, 0), (0.6, 1), (1.0, 1), (2.7, 3), (61.2, 61)])
def test_retry_delays_in_whole_seconds(countdown, delay):
    # kombu refuses a positive countdown under one second on quorum queues.
    assert delay_in_whole_seconds(countdown) == delay


@pytest.mark.parametrize("task, queue", [(APPLY_WRITES_TASK, WRITE_BACK_QUEUE), (DUPLICATE_ROWS_TASK, DUPLICATE_QUEUE)])
@pytest.mark.parametrize("arrived_by", [TASK_EXCHANGE, "celery_delayed_0", "celery_delayed_delivery"])
def test_a_retry_goes_to_the_tasks_own_queue_whatever_exchange_its_message_came_by(task, queue, arrived_by):
    app = make_celery("test", load_settings({}))
    request = Context(id="t1", args=["album", "{}"], kwargs={}, retries=1,
                      delivery_info={"exchange": arrived_by, "routing_key": f"0.0.1.{queue}"})

    @app.task(name=task, bind=True, shared=False)
    def registered(self, *args, **kwargs):
        pass

    options = registered.signature_from_request(request, countdown=0).options
    assert options["queue"] == queue
    assert "exchange" not in options and "routing_key" not in options
    # The router sends it through the task exchange, to the queue's routing key.
    routed = app.amqp.router.route(dict(options), task)
    assert (routed["queue"].exchange.name, routed["queue"].routing_key) == (TASK_EXCHANGE, queue)
