"""cache-svc's command packer writes what redis-py's own hiredis packer writes, and its
clients of one Redis, plain or TLS, use it."""

import pytest
import redis
from redis.connection import HiredisRespSerializer

from cache_svc.redis_clients import CommandPacker, connect


@pytest.mark.parametrize("args", [
    ("GET", "k"),
    ("FUNCTION LOAD", "#!lua name=x\nreturn 1"),
    (b"CLIENT SETNAME", b"cache-svc"),
    ("FCALL", "f", 2, "k1", "k2", 17, -1, 2, "title", "é\u2603", "\0", 3.5, b"\xff\x00raw"),
    ("HSET", "row", "_ver", 2**53 - 1, "n", 0),
])
def test_packs_the_bytes_redis_py_packs(args):
    assert CommandPacker().pack(*args) == HiredisRespSerializer().pack(*args)


def test_a_value_redis_cannot_take_is_a_data_error():
    with pytest.raises(redis.DataError):
        CommandPacker().pack("SET", "k", None)


@pytest.mark.parametrize("url", ["redis://cache-svc:s3cret@redis:6379/0", "rediss://redis.example.com:6380/0"])
def test_the_rows_client_packs_with_it(url):
    pool = connect(url, cluster=False).connection_pool
    assert isinstance(pool.connection_kwargs["command_packer"], CommandPacker)
    assert pool.connection_class is (redis.SSLConnection if url.startswith("rediss") else redis.Connection)
