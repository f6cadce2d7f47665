"""How a bulk converges: rows the cache accepted, rows the workers wrote back, and rows
Postgres holds, sampled over time until Postgres holds them all."""

import threading
import time

import psycopg2

from . import stores


class ConvergenceSampler:
    """During a B1, over time: rows the cache accepted and rows the workers reported
    written (cache-svc's own counters in Redis, every 20 ms), and rows Postgres holds
    (wb_version at or above the first version of the bulk; a count over the table, so
    polled at most a twentieth of the time). Durable is when Postgres holds every row:
    cache-svc counts a row as written only after its transaction committed, so the first
    time its counter reaches N, confirmed by Postgres, is a close upper bound."""

    REDIS_POLL_S = 0.02
    PG_POLL_MIN_S = 0.25

    def __init__(self, counters, database_url: str, since_version: int, n: int):
        self.counters = counters
        self.since_version = since_version
        self.n = n
        self.conn = psycopg2.connect(database_url)
        self.conn.autocommit = True
        # The server process answering this sampler's counts: the bench's work, not the system's.
        self.backend_pid = self.conn.get_backend_pid()
        self.base = self._counters()
        self.series = {"t": [], "cache_rows": [], "written_rows": [], "pg_t": [], "pg_rows": [], "marks": {}}
        self._stop = threading.Event()
        self._durable = threading.Event()
        self._durable_at = None
        self._thread = threading.Thread(target=self._run, name="convergence", daemon=True)
        self._started = None

    def _counters(self) -> tuple[int, int]:
        counters = self.counters()
        return counters.get("accepted", 0), counters.get("flushed", 0)

    def postgres_cpu_s(self) -> float:
        """CPU seconds the Postgres backend answering this sampler has used so far (0 when
        Postgres runs on another machine)."""
        return stores.cpu_seconds(self.backend_pid)

    def start(self):
        self._started = time.perf_counter()
        self._thread.start()

    def mark(self, name: str, at_s: float):
        self.series["marks"][name] = round(at_s, 4)

    def _pg_rows(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM album WHERE wb_version >= %s", (self.since_version,))
            return cur.fetchone()[0]

    def _run(self):
        written_all_at = None
        next_pg, pg_cost = 0.0, 0.0
        while not self._stop.is_set():
            t = time.perf_counter() - self._started
            accepted, flushed = self._counters()
            written = flushed - self.base[1]
            self.series["t"].append(round(t, 4))
            self.series["cache_rows"].append(min(accepted - self.base[0], self.n))
            self.series["written_rows"].append(min(written, self.n))
            if written >= self.n and written_all_at is None:
                written_all_at = t
            if t >= next_pg or (written_all_at is not None):
                query_started = time.perf_counter() - self._started
                pg_rows = self._pg_rows()
                pg_cost = time.perf_counter() - self._started - query_started
                self.series["pg_t"].append(round(query_started, 4))
                self.series["pg_rows"].append(pg_rows)
                if pg_rows >= self.n:
                    # The query saw every row: they committed before it began, and before
                    # cache-svc counted them.
                    self._durable_at = min(query_started, written_all_at or query_started)
                    self._durable.set()
                    return
                next_pg = query_started + max(self.PG_POLL_MIN_S, 19 * pg_cost)
            self._stop.wait(self.REDIS_POLL_S)

    def wait_durable(self, timeout_s: float) -> float:
        if not self._durable.wait(timeout_s):
            raise TimeoutError(f"Postgres holds {self.series['pg_rows'][-1:]} of {self.n} rows after {timeout_s} s")
        self.mark("durable", self._durable_at)
        return self._durable_at

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.conn.close()
