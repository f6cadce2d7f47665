"""Credentials and TLS in the stores' URLs reach the clients: nothing that reads
REDIS_URL or CELERY_RESULT_BACKEND drops the user, the password or the scheme."""

import pytest
import redis

from chinook.celery_setup import make_celery
from chinook.config import load_settings
from chinook.preflight import address


@pytest.mark.parametrize("url, expected", [
    ("redis://cache-svc:s3cret@redis:6379/0", ("redis", 6379)),
    ("rediss://cache-svc:s3cret@redis.example.com/0", ("redis.example.com", 6379)),
    ("rediss://cache-svc:s3cret@redis.example.com:6380/0", ("redis.example.com", 6380)),
    ("postgresql://chinook_persistence:s3cret@postgres/chinook", ("postgres", 5432)),
])
def test_preflight_finds_the_port_of_every_scheme(url, expected):
    assert address(url) == expected


def test_the_result_backend_authenticates_as_the_user_of_its_url():
    settings = load_settings({"CELERY_RESULT_BACKEND": "redis://celery-results:s3cret@redis:6380/1"})
    params = make_celery("test", settings).backend.connparams
    assert (params["username"], params["password"], params["host"], params["port"], params["db"]) == \
        ("celery-results", "s3cret", "redis", 6380, 1)


def test_the_result_backend_keeps_tls():
    settings = load_settings({
        "CELERY_RESULT_BACKEND": "rediss://celery-results:s3cret@redis:6380/1?ssl_cert_reqs=required"})
    params = make_celery("test", settings).backend.connparams
    assert params["connection_class"] is redis.SSLConnection and params["username"] == "celery-results"


def test_the_cache_client_keeps_user_password_and_tls():
    # cache-svc builds its clients with redis.Redis.from_url(REDIS_URL, ...).
    pool = redis.Redis.from_url("rediss://cache-svc:s3cret@redis:6380/0").connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == ("cache-svc", "s3cret")
