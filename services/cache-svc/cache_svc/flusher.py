"""Turns dirty rows into write-back tasks: a batch as soon as one is full, or the
rows that have waited WRITEBACK_DELAY_MS. Runs as one thread in the cache service;
several cache services may run it at once, since claiming is atomic. Each round claims
from every shard, so a hot shard cannot starve the others, and rows of one entity
claimed from several shards travel in the same tasks."""

import json
import logging
import threading

from chinook import metrics, tracing
from chinook.celery_setup import APPLY_WRITES_TASK

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
        if self.publisher.holds_back_writes():
            # Unclaimed, the rows stay pending in Redis until the queue is migrated.
            return published
        while True:
            # Polls, most of them finding nothing: no trace of their own each.
            with tracing.untraced():
                claims = self.store.claim(self.delay_ms, self.batch_size, self.lease_ms)
            if not any(claim.rows for claim in claims):
                return published
            # A flush is under way: the ready rows of the other shards go along at once
            # rather than in tasks of their own a poll later.
            waiting = [shard for shard, claim in enumerate(claims) if claim.ready and not claim.rows]
            # Under the same claim id: their rows may travel in the same tasks.
            claim_id = claims[0].claim
            if waiting:
                with tracing.untraced():
                    claims += self.store.claim(0, self.batch_size, self.lease_ms, waiting, claim_id)
            by_entity: dict[str, list] = {}
            for claim in claims:
                for name, batch in claim.rows.items():
                    by_entity.setdefault(name, []).append(batch)
            published += self._publish(by_entity, claim_id)
            if not any(batch.count == self.batch_size for claim in claims for batch in claim.rows.values()):
                return published

    def _publish(self, by_entity: dict[str, list], claim_id: str) -> int:
        """Publishes rows claimed under claim_id in tasks of up to a batch, each carrying
        the claim id its acknowledgement must name; returns how many rows."""
        for name, batches in by_entity.items():
            metrics.ROWS_COALESCED.labels(name).inc(sum(b.writes - b.count for b in batches))
        tasks = [(name, *task) for name, batches in by_entity.items() for task in self._tasks(batches)]
        for position, (name, rows_json, count, kept_links) in enumerate(tasks):
            links, links_dropped = [], 0
            if tracing.enabled():
                # The task's flush span links back to the spans that accepted these writes.
                links, links_dropped = tracing.bounded_links(
                    link for kept in kept_links for link in tracing.split_links(kept))
            try:
                self.publisher.apply_writes(name, rows_json, claim_id, links, links_dropped)
            except Exception:
                # The rows stay dirty; releasing them lets the next round try again.
                for unpublished_name, unpublished_json, _, _ in tasks[position:]:
                    self.store.release(unpublished_name, json.loads(unpublished_json)["id"])
                raise
            metrics.TASKS_PUBLISHED.labels(APPLY_WRITES_TASK).inc()
            metrics.ROWS_PUBLISHED.labels(name).inc(count)
        return sum(count for _, _, count, _ in tasks)

    def _tasks(self, batches: list) -> list[tuple[str, int, tuple]]:
        """(rows as columnar JSON, how many, the span contexts each kept) of each task the
        claimed batches of one entity make: a full batch goes as lua/claim.lua wrote it;
        the others are joined, column by column, and cut into tasks of up to a batch."""
        tasks = [(b.rows_json, b.count, b.links) for b in batches if b.count == self.batch_size]
        rest = [b for b in batches if b.count != self.batch_size]
        if len(rest) == 1:
            tasks.append((rest[0].rows_json, rest[0].count, rest[0].links))
        if len(rest) < 2:
            return tasks
        columns = [json.loads(batch.rows_json) for batch in rest]
        unset = any("unset" in c for c in columns)
        joined: dict[str, list] = {}
        for batch, column in zip(rest, columns, strict=True):
            if unset:
                column.setdefault("unset", [[]] * batch.count)
            for name, values in column.items():
                joined.setdefault(name, []).extend(values)
        links = [kept for batch in rest for kept in (batch.links or ("",) * batch.count)]
        for start in range(0, len(joined["id"]), self.batch_size):
            task = {name: values[start:start + self.batch_size] for name, values in joined.items()}
            if unset and not any(task["unset"]):
                del task["unset"]
            task_links = links[start:start + self.batch_size]
            tasks.append((json.dumps(task), len(task["id"]), tuple(task_links) if any(task_links) else ()))
        return tasks

    def _run(self):
        backoff = self.poll_s
        while not self._stop.wait(backoff):
            try:
                self.flush_once()
                backoff = self.poll_s
            except Exception as exc:  # noqa: BLE001 - the thread outlives any failure: it backs off and tries again
                backoff = min(max(backoff * 2, 0.5), 10)
                log.warning("cannot schedule write-back tasks (%s: %s); rows stay pending, retrying in %.1f s",
                            type(exc).__name__, exc, backoff)
