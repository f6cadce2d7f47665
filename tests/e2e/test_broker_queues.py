"""The task queues are quorum queues (BROKER_QUEUE_TYPE), countdowns still arrive on
them, classic stays possible, and a queue of the other type holds tasks back, with how to
migrate, until it is migrated."""

import socket
import time

import pytest
from kombu import Connection, Queue

from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_QUEUE, WRITE_BACK_QUEUE, make_celery
from chinook.config import load_settings
from chinook.entities import get_entity, new_claim_id
from chinook.grpc_client import CACHE_SERVICE
from chinook.health_check import health_status
from testkit.api import Api
from testkit.near_cache import eventually
from testkit.stack import Isolation, Stack, Vhosts, own_stack

pytestmark = pytest.mark.e2e

# No rows, in the form a task carries its rows.
NO_ROWS = get_entity("album").columns_json([])


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
    result = celery.send_task(APPLY_WRITES_TASK, args=["album", NO_ROWS], kwargs={"claim": new_claim_id()},
                              countdown=countdown_s, ignore_result=False)
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


def worker_answers_ping(stack: Stack, name: str) -> bool:
    """What the workers' liveness probe asks: their own node answers through the broker."""
    node = stack.commands[name].split("--hostname ")[1].split()[0].replace("%h", socket.gethostname())
    celery = make_celery("test", load_settings(stack.env))
    return celery.control.ping(destination=[node], timeout=5) == [{node: {"ok": "pong"}}]


def test_a_classic_queue_of_the_same_name_holds_tasks_back_until_it_is_migrated(vhost_with_a_classic_queue, tmp_path):
    vhost = vhost_with_a_classic_queue.vhost
    stack = Stack(vhost_with_a_classic_queue, tmp_path)
    api = Api(stack)
    delete_command = f"rabbitmqctl delete_queue -p {vhost} {WRITE_BACK_QUEUE} --if-empty"
    try:
        stack.start("persistence-svc")
        stack.launch("cache-svc")
        eventually(lambda: "NOT_SERVING" in stack.logs("cache-svc", tail=1000), "cache-svc never reported "
                   f"NOT_SERVING:\n{stack.logs('cache-svc')}", timeout_s=30)
        # A worker is ready (Celery's " ready.") without consuming the refused queue.
        stack.start("gateway", "write-back-worker")
        for process in ("cache-svc", "write-back-worker"):
            log = stack.logs(process, tail=1000)
            assert f"the quorum queue '{WRITE_BACK_QUEUE}' in vhost '{vhost}'" in log, log
            assert delete_command in log and "BROKER_QUEUE_TYPE=classic" in log

        # Both stay up: cache-svc live but not ready (nor the gateway, which follows it),
        # the worker answering its liveness probe without consuming from the queue.
        assert health_status(stack.cache_addr, "", stack.grpc_credentials) == "SERVING"
        assert health_status(stack.cache_addr, CACHE_SERVICE, stack.grpc_credentials) == "NOT_SERVING"
        assert api.get("/readyz").status_code == 503
        assert worker_answers_ping(stack, "write-back-worker")
        assert stack.processes["cache-svc"].poll() is None and stack.processes["write-back-worker"].poll() is None

        # A write is accepted and stays pending in Redis: no task is published meanwhile.
        assert api.patch("/albums/7", json={"title": "after the migration"}).status_code == 202
        assert api.post("/write-back/flush?wait=1").status_code == 504
        assert api.get("/albums/7").headers["X-Write-Back"] == "pending"
        assert "cannot schedule write-back tasks" not in stack.logs("cache-svc", tail=1000)
        assert Vhosts().queues(vhost)[WRITE_BACK_QUEUE] == {"type": "classic", "messages": 0, "consumers": 0}

        Vhosts().delete_queue(vhost, WRITE_BACK_QUEUE)
        stack.wait_ready("cache-svc")
        eventually(lambda: Vhosts().queues(vhost).get(WRITE_BACK_QUEUE, {}).get("consumers") == 1,
                   f"the worker does not consume from the new queue:\n{stack.logs('write-back-worker')}",
                   timeout_s=30)
        assert Vhosts().queues(vhost)[WRITE_BACK_QUEUE]["type"] == "quorum"
        api.flush()
        assert api.sql("SELECT title FROM album WHERE album_id = 7") == [("after the migration",)]
        # Retries' countdowns reach the new queue too (through delayed delivery's bindings).
        celery = make_celery("test", load_settings(stack.env))
        result = celery.send_task(APPLY_WRITES_TASK, args=["album", NO_ROWS], kwargs={"claim": new_claim_id()},
                                  countdown=1, ignore_result=False)
        assert result.get(timeout=30) == {"written": 0, "stale": 0, "refused": 0}
    finally:
        stack.stop()
