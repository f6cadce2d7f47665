"""No password of a store's URL reaches a log line: the services that cannot reach their
store say where they tried, with the password as ***."""

import os
import subprocess
import sys
import time

import pytest

from testkit.stack import free_port

PASSWORD = "s3cret-do-not-print"


@pytest.mark.parametrize("module, variable, url, expected", [
    ("cache_svc", "REDIS_URL", "redis://cache-svc:{password}@127.0.0.1:{port}/0", "cannot reach Redis"),
    ("persistence_svc", "DATABASE_URL", "postgresql://chinook:{password}@127.0.0.1:{port}/chinook",
     "cannot reach Postgres"),
])
def test_a_store_that_does_not_answer_is_named_without_its_password(module, variable, url, expected, tmp_path):
    env = {**os.environ, variable: url.format(password=PASSWORD, port=free_port()),
           "CACHE_GRPC_PORT": str(free_port()), "PERSISTENCE_GRPC_PORT": str(free_port()),
           "METRICS_PORT": str(free_port())}
    log_path = tmp_path / f"{module}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while expected not in log_path.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
    output = log_path.read_text()
    assert expected in output, output
    assert PASSWORD not in output and ":***@127.0.0.1:" in output
