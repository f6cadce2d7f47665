"""The stale-read probe of the read-mostly mix: how long after a write was acknowledged
through one gateway another gateway process still serves the row's older value.

In a thread, over and over: read a row through the second gateway (each of its worker
processes a few times, so that every near cache holds it), PATCH it through the first
one with a title of its own, then read it through each worker of the second every
~2 ms until all of them show the new title. The rows are the probe's alone, so any
other title is an older one."""

import http.client
import json
import threading
import time
import uuid

from .load import LOOPBACK, percentile

# A second connection to the same worker does not help; beyond this, give up on the rest.
MAX_CONNECTIONS = 32


class ProbeError(Exception):
    pass


class StaleReadProbe:
    """`owners_of(client ports)` returns {client port: worker pid} of connections to the
    reading gateway; `workers` is how many worker processes it has."""

    def __init__(self, writer_port: int, reader_port: int, workers: int, owners_of, ids: list[int], *,
                 bound_s: float, interval_s: float, poll_s: float, prime_reads: int, give_up_s: float):
        self.writer_port, self.reader_port = writer_port, reader_port
        self.workers, self.owners_of = workers, owners_of
        self.ids = ids
        self.bound_s, self.interval_s, self.poll_s = bound_s, interval_s, poll_s
        self.prime_reads, self.give_up_s = prime_reads, give_up_s
        self.tag = uuid.uuid4().hex[:8]
        self.visibility_s: list[float] = []
        self.probes = self.reads = self.never_visible = 0
        self.stale_within_bound = self.stale_after_bound = 0
        self.readers: list[http.client.HTTPConnection] = []
        self.workers_reached = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stale-read-probe", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(self.give_up_s + 30)
        ordered = sorted(self.visibility_s)
        return {
            "bound_s": self.bound_s, "reader_connections": len(self.readers),
            "reader_workers": self.workers, "reader_workers_reached": self.workers_reached,
            "probes": self.probes, "visible": len(ordered), "never_visible": self.never_visible,
            "reads": self.reads,
            "visibility_p50_ms": round(percentile(ordered, 50) * 1000, 3) if ordered else None,
            "visibility_p99_ms": round(percentile(ordered, 99) * 1000, 3) if ordered else None,
            "visibility_max_ms": round(ordered[-1] * 1000, 3) if ordered else None,
            "stale_reads_within_bound": self.stale_within_bound,
            "stale_reads_after_bound": self.stale_after_bound,
            "error": self.error,
        }

    def _title(self, connection: http.client.HTTPConnection, album_id: int) -> str:
        connection.request("GET", f"/albums/{album_id}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise ProbeError(f"GET /albums/{album_id} through port {connection.port}: {response.status} {body[:200]!r}")
        return json.loads(body)["title"]

    def _connect_each_worker(self) -> list[http.client.HTTPConnection]:
        """A keep-alive connection to each worker of the reading gateway, as far as
        owners_of can tell them apart (else as many connections as it has workers)."""
        opened, by_worker = [], {}
        while len(opened) < MAX_CONNECTIONS and len(by_worker) < self.workers:
            connection = http.client.HTTPConnection(LOOPBACK, self.reader_port, timeout=10)
            self._title(connection, self.ids[0])
            opened.append(connection)
            owners = self.owners_of([c.sock.getsockname()[1] for c in opened])
            for c in opened:
                owner = owners.get(c.sock.getsockname()[1])
                if owner is not None:
                    by_worker.setdefault(owner, c)
        self.workers_reached = len(by_worker)
        chosen = list(by_worker.values()) or opened[:self.workers]
        for connection in opened:
            if connection not in chosen:
                connection.close()
        return chosen

    def _run(self):
        writer = http.client.HTTPConnection(LOOPBACK, self.writer_port, timeout=10)
        try:
            self.readers = self._connect_each_worker()
            while not self._stop.is_set():
                self._probe(self.ids[self.probes % len(self.ids)], f"probe {self.tag} {self.probes}", writer)
                self._stop.wait(self.interval_s)
        except Exception as exc:  # noqa: BLE001 - reported with the results, the run goes on
            self.error = repr(exc)
        finally:
            for connection in [writer, *self.readers]:
                connection.close()

    def _probe(self, album_id: int, title: str, writer: http.client.HTTPConnection):
        for reader in self.readers:
            for _ in range(self.prime_reads):
                self._title(reader, album_id)
                self.reads += 1
        writer.request("PATCH", f"/albums/{album_id}", body=json.dumps({"title": title}),
                       headers={"Content-Type": "application/json"})
        response = writer.getresponse()
        body = response.read()
        if response.status != 202:
            raise ProbeError(f"PATCH /albums/{album_id}: {response.status} {body[:200]!r}")
        acknowledged = time.perf_counter()
        self.probes += 1
        pending = list(self.readers)
        while True:
            for reader in list(pending):
                sent = time.perf_counter()
                seen = self._title(reader, album_id)
                answered = time.perf_counter()
                self.reads += 1
                if seen == title:
                    pending.remove(reader)
                elif sent - acknowledged > self.bound_s:
                    self.stale_after_bound += 1
                else:
                    self.stale_within_bound += 1
            if not pending:
                # Visible when the last worker first answered with the new title.
                self.visibility_s.append(answered - acknowledged)
                return
            if time.perf_counter() - acknowledged > self.give_up_s:
                self.never_visible += 1
                return
            time.sleep(self.poll_s)
