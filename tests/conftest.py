import uuid
from urllib.parse import urlsplit

import pytest
import redis

from chinook.config import load_settings
from persistence_svc import initdb
from testkit.stack import Isolation, Stack
from testkit.stores import RedisClusterServer


@pytest.fixture(scope="session")
def isolation():
    """A database, Redis key prefix and RabbitMQ vhost for this test run only."""
    isolation = Isolation.create("test")
    yield isolation
    isolation.destroy()


@pytest.fixture(scope="session")
def stack(isolation, tmp_path_factory):
    # Refused writes reach the dead letters in well under a second.
    stack = Stack(isolation, tmp_path_factory.mktemp("stack"),
                  {"WRITEBACK_MAX_ATTEMPTS": "3", "WRITEBACK_RETRY_BACKOFF_MS": "50"})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def fresh_database():
    """A freshly loaded Chinook database for one test; dropped afterwards."""
    url = urlsplit(load_settings().database_url)._replace(path=f"/chinook_db_{uuid.uuid4().hex[:12]}").geturl()
    initdb.init_database(url)
    yield url
    initdb.drop_database(url)


@pytest.fixture
def redis_client():
    return redis.Redis.from_url(load_settings().redis_url, decode_responses=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A private Redis Cluster of 3 masters and 3 replicas, for the tests that run the
    store on one; tests that kill its nodes start their own."""
    with RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
