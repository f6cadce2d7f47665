"""The task queues are quorum queues (BROKER_QUEUE_TYPE), countdowns still arrive on
them, classic stays possible, and a queue of the other type stops the processes with
how to migrate."""

import time

import pytest
from kombu import Connection, Queue

from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_QUEUE, WRITE_BACK_QUEUE, make_celery
from chinook.config import load_settings
from tests.support.api import Api
from tests.support.stack import Isolation, Stack, Vhosts, own_stack

pytestmark = pytest.mark.e2e


def task_queue_types(vhost: str) -> dict[str, str]:
    queues = Vhosts().queues(vhost)
    return {name: queues[name]["type"] for name in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE) if name in queues}


def test_a_fresh_vhost_gets_quorum_queues(stack):
    assert task_queue_types(stack.isolation.vhost) == {WRITE_BACK_QUEUE: "quorum", DUPLICATE_QUEUE: "quorum"}


def delayed_messages(vhost: str) -> int:
    return sum(queue["messages"] for name, queue in Vhosts().queues(vhost).items()
               if name.startswith("celery_delayed_"))


def test_a_countdown_waits_in_the_delayed_queues_then_reaches_the_worker(stack):
    countdown_s = 15
    celery = make_celery("test", load_settings(stack.env))
    # An empty batch: the worker runs the task, and it writes nothing.
    result = celery.send_task(APPLY_WRITES_TASK, args=["album", []], countdown=countdown_s, ignore_result=False)
    # The broker counts a quorum queue's messages every few seconds, well within the countdown.
    deadline = time.monotonic() + countdown_s
    while delayed_messages(stack.isolation.vhost) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert delayed_messages(stack.isolation.vhost) == 1
    assert result.get(timeout=120) == {"written": 0, "stale": 0, "refused": 0}


def test_classic_queues_on_request_and_writes_still_flushed(tmp_path):
    with own_stack("classic", tmp_path, {"BROKER_QUEUE_TYPE": "classic"}) as stack:
        assert task_queue_types(stack.isolation.vhost) == {WRITE_BACK_QUEUE: "classic", DUPLICATE_QUEUE: "classic"}
        api = Api(stack)
        assert api.patch("/albums/5", json={"title": "on classic queues"}).status_code == 202
        api.flush()
        assert api.sql("SELECT title FROM album WHERE album_id = 5") == [("on classic queues",)]


@pytest.fixture
def vhost_with_a_classic_queue():
    """A vhost where write_back_queue exists as a classic queue, as an older version left it."""
    isolation = Isolation.create("migrate")
    with Connection(isolation.broker_url) as connection:
        Queue(WRITE_BACK_QUEUE, channel=connection.default_channel).declare()
    yield isolation
    isolation.destroy()


@pytest.mark.parametrize("process", ["cache-svc", "write-back-worker"])
def test_a_classic_queue_of_the_same_name_stops_the_process_with_how_to_migrate(
        process, vhost_with_a_classic_queue, tmp_path):
    vhost = vhost_with_a_classic_queue.vhost
    stack = Stack(vhost_with_a_classic_queue, tmp_path)
    try:
        with pytest.raises(RuntimeError, match=f"{process} exited with 1"):
            stack.start(process)
    finally:
        stack.stop()
    log = stack.logs(process)
    assert f"the quorum queue '{WRITE_BACK_QUEUE}' in vhost '{vhost}'" in log
    assert f"rabbitmqctl delete_queue -p {vhost} {WRITE_BACK_QUEUE}" in log
    assert "BROKER_QUEUE_TYPE=classic" in log
    assert task_queue_types(vhost) == {WRITE_BACK_QUEUE: "classic"}
