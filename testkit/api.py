"""The gateway's HTTP API as tests and benchmarks use it, and Postgres to check what
reached it."""

import contextlib
import time

import psycopg2
import requests


class Api:
    """The gateway's HTTP API, and Postgres to check what reached it; the first gateway,
    or the one named (Stack.add_gateway)."""

    def __init__(self, stack, gateway: str = "gateway"):
        self.base = stack.gateway_url_of(gateway)
        self.database_url = stack.isolation.database_url
        self.session = requests.Session()

    def request(self, method, path, **kwargs):
        return self.session.request(method, self.base + path, timeout=120, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def flush(self, wait_s=30):
        response = self.post(f"/write-back/flush?wait={wait_s}")
        assert response.status_code == 200, response.text
        assert response.json()["pending"] == 0
        return response.json()

    def sql(self, query, params=()):
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None

    def refuse_poison_titles(self):
        """Postgres refuses album titles starting with POISON from now on, as a constraint
        added after the writes were accepted (NOT VALID: rows already there stay)."""
        self.sql("ALTER TABLE album ADD CONSTRAINT album_no_poison CHECK (title NOT LIKE 'POISON%%') NOT VALID")

    def accept_poison_titles(self):
        self.sql("ALTER TABLE album DROP CONSTRAINT IF EXISTS album_no_poison")

    @contextlib.contextmanager
    def poison_titles_refused(self):
        self.refuse_poison_titles()
        try:
            yield
        finally:
            self.accept_poison_titles()

    def wait_for_task(self, task_id, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            body = self.get(f"/tasks/{task_id}").json()
            seen.append(body)
            if body["state"] in ("SUCCESS", "FAILURE"):
                return body, seen
            time.sleep(0.02)
        raise TimeoutError(f"task {task_id} not done: {seen[-1]}")
