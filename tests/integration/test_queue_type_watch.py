"""Task queues left with the other type on a real RabbitMQ: each refused queue is named
with how to migrate it, and the watch goes on once they are gone."""

import uuid
from urllib.parse import urlsplit

import pytest
from kombu import Connection, Queue

from chinook.celery_setup import DUPLICATE_QUEUE, WRITE_BACK_QUEUE, QueueTypeWatch, make_celery
from chinook.config import load_settings
from tests.support.stack import Vhosts


@pytest.fixture
def vhost_with_classic_queues():
    """A vhost of its own where both task queues exist as classic queues."""
    base = load_settings()
    vhost = f"chinook_watch_{uuid.uuid4().hex[:10]}"
    Vhosts().create(vhost, urlsplit(base.broker_url).username or "guest")
    broker_url = urlsplit(base.broker_url)._replace(path=f"/{vhost}").geturl()
    with Connection(broker_url) as connection:
        for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE):
            Queue(name, channel=connection.default_channel).declare()
    yield vhost, broker_url
    Vhosts().delete(vhost)


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
