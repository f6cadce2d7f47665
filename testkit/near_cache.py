"""Reading through a gateway's near cache in tests: a keep-alive session stays with one
gateway worker process, so it reads through one process."""

import time

import requests


def eventually(check, failure: str, timeout_s: float = 5):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def read_until_near(session: requests.Session, url: str, timeout_s: float = 10) -> requests.Response:
    """Reads until the row comes from the near cache (the process may still be subscribing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = session.get(url, timeout=10)
        assert response.status_code == 200, response.text
        if response.headers["X-Cache-Tier"] == "near" or time.monotonic() > deadline:
            return response
        time.sleep(0.05)
