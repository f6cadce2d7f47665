"""Turns dirty rows into write-back tasks: a batch as soon as one is full, or the
rows that have waited WRITEBACK_DELAY_MS. Runs as one thread in the cache service;
several cache services may run it at once, since claiming a batch is atomic."""

import logging
import threading

from chinook import metrics
from chinook.celery_setup import APPLY_WRITES_TASK
from chinook.entities import ENTITIES, get_entity

log = logging.getLogger(__name__)


class Flusher:
    def __init__(self, store, publisher, settings):
        self.store = store
        self.publisher = publisher
        self.batch_size = settings.writeback_batch_size
        self.delay_ms = settings.writeback_delay_ms
        self.lease_ms = settings.writeback_lease_ms
        # Often enough that a row waits little beyond the delay, rarely enough to stay idle.
        self.poll_s = min(max(self.delay_ms / 5, 5), 50) / 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self, timeout_s: float = 5.0):
        self._stop.set()
        self._thread.join(timeout_s)

    def flush_once(self) -> int:
        """Claims and publishes what is due now; returns the number of rows published."""
        published = 0
        for name in ENTITIES:
            while True:
                rows = self.store.claim(name, self.delay_ms, self.batch_size, self.lease_ms)
                if not rows:
                    break
                entity = get_entity(name)
                # A partial row writes only the columns it holds.
                payload = [[r.id, r.version, entity.columns_from_store(r.fields) if r.partial
                            else entity.row_from_store(r.fields)] for r in rows]
                try:
                    self.publisher.apply_writes(name, payload)
                except Exception:
                    # The rows stay dirty; releasing them lets the next round try again.
                    self.store.release(name, [r.id for r in rows])
                    raise
                metrics.TASKS_PUBLISHED.labels(APPLY_WRITES_TASK).inc()
                metrics.ROWS_COALESCED.labels(name).inc(sum(r.writes - 1 for r in rows))
                published += len(rows)
                if len(rows) < self.batch_size:
                    break
        return published

    def _run(self):
        backoff = self.poll_s
        while not self._stop.wait(backoff):
            try:
                self.flush_once()
                backoff = self.poll_s
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), 10)
                log.warning("cannot schedule write-back tasks (%s: %s); rows stay pending, retrying in %.1f s",
                            type(exc).__name__, exc, backoff)
