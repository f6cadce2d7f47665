"""Task queues left with the other type on a real RabbitMQ: each refused queue is named
with how to migrate it, and the watch goes on once they are gone. With BROKER_PREDECLARED,
a missing queue is named too, nothing is declared, and the watch goes on once the queues
are there."""

import uuid
from urllib.parse import urlsplit

import pytest
from kombu import Connection, Queue

from chinook.celery_setup import (
    DUPLICATE_QUEUE,
    WRITE_BACK_QUEUE,
    QueueMissing,
    QueueTypeWatch,
    make_celery,
    task_queues,
)
from chinook.config import load_settings
from testkit.stack import Vhosts


@pytest.fixture
def empty_vhost():
    """A vhost of its own, and its URL."""
    base = load_settings()
    vhost = f"chinook_watch_{uuid.uuid4().hex[:10]}"
    Vhosts().create(vhost, urlsplit(base.broker_url).username or "guest")
    yield vhost, urlsplit(base.broker_url)._replace(path=f"/{vhost}").geturl()
    Vhosts().delete(vhost)


@pytest.fixture
def vhost_with_classic_queues(empty_vhost):
    """A vhost of its own where both task queues exist as classic queues."""
    with Connection(empty_vhost[1]) as connection:
        for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE):
            Queue(name, channel=connection.default_channel).declare()
    return empty_vhost


def test_every_refused_queue_is_named_and_the_watch_goes_on_once_they_are_migrated(vhost_with_classic_queues):
    vhost, broker_url = vhost_with_classic_queues
    app = make_celery("test", load_settings({"BROKER_URL": broker_url}))
    declared = []
    watch = QueueTypeWatch(app, "quorum", [WRITE_BACK_QUEUE, DUPLICATE_QUEUE], on_declared=lambda: declared.append(1),
                           connect_retries=1)

    assert not watch.check()
    assert watch.refusal.queue_names == [WRITE_BACK_QUEUE, DUPLICATE_QUEUE]
    message = str(watch.refusal)
    assert f"the quorum queues '{WRITE_BACK_QUEUE}' and '{DUPLICATE_QUEUE}' in vhost '{vhost}'" in message
    for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE):
        assert f"`rabbitmqctl delete_queue -p {vhost} {name} --if-empty`" in message
    assert watch.refuses(WRITE_BACK_QUEUE) and watch.refuses(DUPLICATE_QUEUE)

    Vhosts().delete_queue(vhost, DUPLICATE_QUEUE)
    assert not watch.check()
    assert watch.refusal.queue_names == [WRITE_BACK_QUEUE] and not watch.refuses(DUPLICATE_QUEUE)
    assert declared == []

    Vhosts().delete_queue(vhost, WRITE_BACK_QUEUE)
    assert watch.check()
    assert watch.refusal is None and declared == [1]
    queues = Vhosts().queues(vhost)
    assert {name: queues[name]["type"] for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE)} == {
        WRITE_BACK_QUEUE: "quorum", DUPLICATE_QUEUE: "quorum"}


def test_predeclared_queues_are_only_looked_for_and_a_missing_one_is_named(empty_vhost):
    vhost, broker_url = empty_vhost
    app = make_celery("test", load_settings({"BROKER_URL": broker_url, "BROKER_PREDECLARED": "true"}))
    watch = QueueTypeWatch(app, "quorum", [WRITE_BACK_QUEUE, DUPLICATE_QUEUE], connect_retries=1)

    assert not watch.check()
    assert isinstance(watch.refusal, QueueMissing) and watch.refuses(WRITE_BACK_QUEUE)
    assert watch.refusal.queue_names == [WRITE_BACK_QUEUE, DUPLICATE_QUEUE]
    assert f"no task queue '{WRITE_BACK_QUEUE}' and '{DUPLICATE_QUEUE}' in vhost '{vhost}'" in str(watch.refusal)
    assert Vhosts().queues(vhost) == {}  # looked for, not declared

    # Declared as the broker's definitions declare them: the watch goes on.
    with Connection(broker_url) as connection:
        for queue in task_queues("quorum"):
            queue.bind(connection.default_channel).declare()
    assert watch.check() and watch.refusal is None
