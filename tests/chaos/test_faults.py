"""Each scenario: a bulk update of every album (11,104 rows) and racing single-row
updates on hot rows, one fault injected mid-way, then a flush. Postgres must end with
the last accepted value of every row, nothing pending, and every write a client
retried must have been accepted in the end. Scenarios marked slow run in `make chaos`."""

import signal
import threading
import time

import pytest

from tests.chaos.workload import Workload, wait_until_flushing

pytestmark = pytest.mark.chaos
PROJECT_PROCESSES = ("persistence-svc", "cache-svc", "gateway", "write-back-worker", "duplication-worker")


def kill(stack, *names):
    for name in names:
        stack.signal(name, signal.SIGKILL)
        stack.processes[name].wait(30)


def run_scenario(api, album_ids, label, inject, report, injected, wait_for_flush=True):
    workload = Workload(api, label)
    workload.start_hot_writers()
    bulk = threading.Thread(target=workload.bulk, args=(album_ids, "bulk"), daemon=True)
    bulk.start()
    if wait_for_flush:
        wait_until_flushing(api)
    inject()
    bulk.join(300)
    assert not bulk.is_alive(), "the bulk update was never accepted"
    time.sleep(0.5)  # hot writers keep going after the recovery
    workload.stop_hot_writers()
    outcome = workload.verify()
    report(f"{injected} (clients retried {workload.client_errors} refused requests)", outcome.checked,
           len(outcome.lost))
    assert not outcome.lost, f"lost {len(outcome.lost)} rows, e.g. {outcome.lost[:5]}"


def test_sigkill_worker_mid_flush(chaos_stack, chaos_api, album_ids, report):
    def inject():
        kill(chaos_stack, "write-back-worker")
        chaos_stack.start("write-back-worker")

    run_scenario(chaos_api, album_ids, "worker-kill", inject, report, "SIGKILL write-back worker mid-flush")


def test_sigkill_cache_svc_mid_bulk(chaos_stack, chaos_api, album_ids, report):
    def inject():
        time.sleep(0.05)
        kill(chaos_stack, "cache-svc")
        chaos_stack.start("cache-svc")

    run_scenario(chaos_api, album_ids, "cache-kill", inject, report, "SIGKILL cache-svc mid-bulk",
                 wait_for_flush=False)


@pytest.mark.slow
def test_sigkill_persistence_svc_mid_statement(chaos_stack, chaos_api, album_ids, report):
    def inject():
        kill(chaos_stack, "persistence-svc")
        chaos_stack.start("persistence-svc")

    run_scenario(chaos_api, album_ids, "persistence-kill", inject, report, "SIGKILL persistence-svc mid-flush")


@pytest.mark.slow
def test_restart_rabbitmq(stores, chaos_api, album_ids, report):
    run_scenario(chaos_api, album_ids, "rabbitmq-restart", lambda: stores.rabbitmq.restart(), report,
                 "restart RabbitMQ mid-flush")


@pytest.mark.slow
def test_restart_postgres(stores, chaos_api, album_ids, report):
    run_scenario(chaos_api, album_ids, "postgres-crash", lambda: stores.postgres.restart(kill=True), report,
                 "SIGKILL Postgres mid-flush, then start it (crash recovery)")


@pytest.mark.slow
def test_sigkill_redis_with_aof_always(stores, chaos_api, album_ids, report):
    run_scenario(chaos_api, album_ids, "redis-crash", lambda: stores.redis.restart(kill=True), report,
                 "SIGKILL Redis (appendfsync always) mid-flush, then start it")


@pytest.mark.slow
def test_sigkill_everything_but_the_stores_then_start_again(chaos_stack, chaos_api, album_ids, report):
    def inject():
        kill(chaos_stack, *PROJECT_PROCESSES)
        chaos_stack.start()

    run_scenario(chaos_api, album_ids, "kill-all", inject, report,
                 "SIGKILL all five processes mid-flush, then start them again")
