"""Gathers the calls of concurrent requests in one gateway process into one call (single
updates into UpdateRows, reads that missed the near cache into GetRows), so the per-call
cost of the gRPC hop is paid once per batch.

The first request of a batch leads it: it waits up to the linger for others to join
(not at all when no other update is in progress in the process, so a lone client pays
nothing), closes the batch and sends it; each request then takes its own result. While a
batch is in flight, the next one gathers, so a slow call delays only its own requests.
"""

import threading


class _Batch:
    __slots__ = ("done", "error", "full", "items", "results")

    def __init__(self):
        self.items = []
        self.results = None
        self.error = None
        self.full = threading.Event()
        self.done = threading.Event()


class CallBatcher:
    def __init__(self, send, linger_s: float, max_batch: int = 64):
        # send(items) returns one result per item, in order, or raises for all of them.
        self._send = send
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self._in_progress = 0

    def submit(self, item):
        with self._lock:
            self._in_progress += 1
            batch = self._open
            leads = batch is None
            if leads:
                batch = self._open = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self._max_batch:
                self._open = None
                batch.full.set()
            others = self._in_progress > 1
        try:
            if leads:
                self._lead(batch, linger=others)
            else:
                batch.done.wait()
            if batch.error is not None:
                raise batch.error
            return batch.results[index]
        finally:
            with self._lock:
                self._in_progress -= 1

    def _lead(self, batch: _Batch, linger: bool):
        if linger and self._linger_s > 0:
            batch.full.wait(self._linger_s)
        with self._lock:
            if self._open is batch:
                self._open = None
        try:
            batch.results = self._send(batch.items)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the call's error
            batch.error = exc
        finally:
            batch.done.set()
