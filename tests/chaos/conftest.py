"""Fault injection against real processes: private, killable Redis (AOF), RabbitMQ and
Postgres on free ports, the five project processes on top, and a summary table of
what each scenario injected, checked and lost."""

import uuid
from dataclasses import dataclass

import pytest

from persistence_svc import initdb
from testkit.api import Api
from testkit.fault_table import FaultTable
from testkit.stack import Stack
from testkit.stores import PostgresServer, RabbitMQServer, RedisServer
from tests.chaos.workload import multiply_albums

RESULTS = FaultTable("write-back fault injection", ["scenario", "rows checked", "rows lost", "injected"])


@dataclass
class PrivateStores:
    redis: RedisServer
    postgres: PostgresServer
    rabbitmq: RabbitMQServer
    run_id: str

    @property
    def database_url(self) -> str:
        return self.postgres.database_url("chinook")

    def env(self) -> dict:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url.rsplit("/", 1)[0] + "/1",
            "REDIS_KEY_PREFIX": "chinook:",
            "BROKER_URL": self.rabbitmq.url,
        }


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    with RedisServer(root / "redis", appendfsync="always") as redis_server, \
            PostgresServer(root / "postgres") as postgres_server, \
            RabbitMQServer(root / "rabbitmq") as rabbitmq_server:
        private = PrivateStores(redis_server, postgres_server, rabbitmq_server, f"chaos_{uuid.uuid4().hex[:8]}")
        initdb.init_database(private.database_url)
        multiply_albums(private.database_url)
        yield private


@pytest.fixture(scope="session")
def chaos_stack(stores, tmp_path_factory):
    stack = Stack(stores, tmp_path_factory.mktemp("chaos-stack"), {
        "WRITE_BACK_WORKER_CONCURRENCY": "4",
        # A batch whose task vanished is claimed again after 3 s instead of 30.
        "WRITEBACK_LEASE_MS": "3000",
        "WRITEBACK_MAX_ATTEMPTS": "3",
        "WRITEBACK_RETRY_BACKOFF_MS": "50",
    })
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def chaos_api(chaos_stack):
    return Api(chaos_stack)


@pytest.fixture(scope="session")
def album_ids(chaos_api):
    return [row[0] for row in chaos_api.sql("SELECT album_id FROM album ORDER BY album_id")]


@pytest.fixture
def report(request):
    """report(injected, checked, lost): one row of the summary table, printed as it goes."""

    def record(injected: str, checked: int, lost: int):
        RESULTS.record(request.config, (request.node.name, checked, lost, injected))
        print(f"\n[{request.node.name}] injected: {injected}; checked {checked} rows, lost {lost}")

    return record


def pytest_terminal_summary(terminalreporter, config):
    results = RESULTS.rows(config)
    RESULTS.write(terminalreporter, config, f"{len(results)} scenarios, {sum(r[1] for r in results)} rows checked, "
                                            f"{sum(r[2] for r in results)} rows lost")
