import pytest

from chinook.celery_setup import DUPLICATE_QUEUE, TASK_EXCHANGE, WRITE_BACK_QUEUE, delay_in_whole_seconds, make_celery
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
