"""Fault injection with pending writes on a Redis Cluster: a private cluster of 3 masters
and 3 replicas (append-only file, fsync always, a short cluster-node-timeout) started
from the machine's binaries, and the system on top of it with two cache-svc and two
gateways, every gateway and worker calling both cache-svc, and WRITEBACK_MIN_REPLICAS=1.
Postgres and RabbitMQ are the machine's, with a database and a vhost of the run's own;
the Celery result backend is the machine's Redis (it does not speak Redis Cluster).
The run ends with a table: scenario, rows checked, acknowledged writes lost, time to
recover."""

import pytest

from testkit.api import Api
from testkit.fault_table import FaultTable
from testkit.stack import own_stack
from testkit.stores import RedisClusterServer
from tests.chaos.workload import multiply_albums

# Short enough for a failover in seconds, long enough that a node busy with a bulk on
# this loaded 2-core machine is not taken for dead.
NODE_TIMEOUT_MS = 2000
# The processes of the system, in the order a rolling restart takes them.
PROCESSES = ("cache-svc", "cache-svc-b", "gateway", "gateway-b", "write-back-worker", "duplication-worker",
             "persistence-svc")

RESULTS = FaultTable(
    "write-back on a Redis Cluster: fault injection",
    ["scenario", "rows checked", "acknowledged writes lost", "time to recover (s)", "injected"],
    caption=(
        ("rows checked: every album, its last acknowledged title compared with Postgres after the final flush "
         "(and three hot rows with the cache)."),
        "acknowledged writes lost: rows whose last acknowledged title Postgres or the cache does not hold.",
        ("time to recover: from the fault until one write to each shard, sent through the gateways from then "
         "on and retried while refused, was accepted and had reached Postgres; for a sequence of faults, the "
         "longest of its steps."),
    ),
)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    with RedisClusterServer(tmp_path_factory.mktemp("redis-cluster"), node_timeout_ms=NODE_TIMEOUT_MS) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_stack(cluster, tmp_path_factory):
    def prepare(stack):
        multiply_albums(stack.isolation.database_url)
        stack.add_cache_svc("cache-svc-b")
        stack.balance_cache_svcs()
        stack.add_gateway("gateway-b")

    with own_stack("chaos_cluster", tmp_path_factory.mktemp("chaos-cluster-stack"), {
        "REDIS_CLUSTER": "true",
        "REDIS_URL": cluster.url,
        "WRITEBACK_MIN_REPLICAS": "1",
        # A batch whose task vanished is claimed again after 3 s instead of 30.
        "WRITEBACK_LEASE_MS": "3000",
        "WRITEBACK_MAX_ATTEMPTS": "3",
        "WRITEBACK_RETRY_BACKOFF_MS": "50",
    }, prepare) as stack:
        yield stack


@pytest.fixture(scope="session")
def gateways(cluster_stack):
    return Api(cluster_stack), Api(cluster_stack, "gateway-b")


@pytest.fixture(scope="session")
def cluster_store(cluster_stack):
    """The RowStore of the run's keys on the cluster, to see where writes are pending."""
    return cluster_stack.row_store()


@pytest.fixture(scope="session")
def album_ids(gateways):
    return [row_id for (row_id,) in gateways[0].sql("SELECT album_id FROM album ORDER BY album_id")]


@pytest.fixture
def report(request):
    """report(scenario, checked, lost, recovered_s, injected): one row of the table,
    printed as it goes."""

    def record(scenario: str, checked: int, lost: int, recovered_s: float, injected: str):
        RESULTS.record(request.config, (scenario, checked, lost, round(recovered_s, 1), injected))
        print(f"\n[{scenario}] injected: {injected}; checked {checked} rows, {lost} acknowledged writes lost, "
              f"recovered in {recovered_s:.1f} s")

    return record


def pytest_terminal_summary(terminalreporter, config):
    results = RESULTS.rows(config)
    RESULTS.write(terminalreporter, config, f"{len(results)} scenarios, {sum(r[1] for r in results)} rows checked, "
                                            f"{sum(r[2] for r in results)} acknowledged writes lost")
