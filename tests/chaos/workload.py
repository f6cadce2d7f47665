"""The chaos workload: a bulk update of every album with titles the test chose, and
single-row updates racing on hot rows, sent by clients that retry until a write is
accepted, as a well-behaved client does. What the clients saw accepted last is what
Postgres must hold in the end."""

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import requests

from chinook.entities import get_entity
from persistence_svc import repository
from persistence_svc.db import Database
from testkit.api import Api

# The album table multiplied to 347 * 32 = 11,104 rows: every bulk is at least 10,000.
ALBUM_MULTIPLIER = 32
HOT_ROWS = tuple(range(1, 11))
RETRY_PAUSE_S = 0.05


def multiply_albums(database_url: str):
    """Multiplies the album table of a freshly loaded database by ALBUM_MULTIPLIER."""
    db = Database(database_url, max_connections=2)
    try:
        for _ in repository.duplicate_rows(db, get_entity("album"), ALBUM_MULTIPLIER, "chaos-seed"):
            pass
    finally:
        db.close()


def wait_until_flushing(api: Api, timeout_s: float = 60):
    """Returns once some rows are pending and some batches have reached Postgres."""
    start = api.get("/write-back/status").json()["flushed_total"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = api.get("/write-back/status").json()
        except requests.RequestException:  # the gateway is down or restarting under a fault
            status = {"pending": 0, "flushed_total": start}
        if status.get("pending", 0) > 0 and status.get("flushed_total", start) > start:
            return
        time.sleep(0.005)
    raise TimeoutError("the flush never started")


@dataclass
class Outcome:
    checked: int
    lost: list = field(default_factory=list)  # (album_id, expected, found)


class Workload:
    """Clients of `api`'s gateway, and of the gateways of `spread_over` too if given: each
    request goes to the next gateway in turn, so a retry reaches another one."""

    def __init__(self, api: Api, label: str, spread_over: Sequence[Api] = ()):
        self.api = api
        self.label = label
        self._bases = itertools.cycle([api.base, *(other.base for other in spread_over)])
        self.expected: dict[int, str] = {}
        self.client_errors = 0  # refused or failed requests the client retried
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: list[BaseException] = []

    def send_until_accepted(self, session, method, path, body, deadline_s=180):
        """Sends the request until a gateway answers 202, retrying refusals (502, 503,
        504) and connection errors; any other answer fails."""
        deadline = time.monotonic() + deadline_s
        while True:
            with self._lock:
                base = next(self._bases)
            try:
                response = session.request(method, base + path, json=body, timeout=60)
                if response.status_code == 202:
                    return response
                if response.status_code not in (502, 503, 504):
                    raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text}")
            except requests.ConnectionError:
                pass
            with self._lock:
                self.client_errors += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path} not accepted within {deadline_s} s")
            time.sleep(RETRY_PAUSE_S)

    def bulk(self, ids: list[int], tag: str):
        """Sends one bulk update of `ids` until it is accepted; records its titles."""
        updates = [{"album_id": i, "title": f"{self.label} {tag} {i}"} for i in ids]
        self.send_until_accepted(requests.Session(), "POST", "/albums/bulk", {"updates": updates})
        with self._lock:
            self.expected.update({u["album_id"]: u["title"] for u in updates})

    def start_hot_writers(self, writers: int = 2):
        """Threads that keep updating the hot rows until stop_hot_writers()."""
        for writer in range(writers):
            thread = threading.Thread(target=self._hot_writer, args=(writer,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _hot_writer(self, writer: int):
        try:
            self._write_hot_rows(writer)
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop_hot_writers
            self._failures.append(exc)

    def _write_hot_rows(self, writer: int):
        session = requests.Session()
        n, last_round_ends = 0, None
        while last_round_ends is None or n < last_round_ends:
            if last_round_ends is None and self._stop.is_set():
                # One more write of each of its rows, each sent after the stop, so after any
                # bulk that was acknowledged before it: what the writer sees accepted last is
                # then what Redis applied last, even where a bulk's acknowledgement reached
                # the client after later single writes.
                last_round_ends = n + len(HOT_ROWS) // 2
            # Each writer owns its own hot rows, so what it saw accepted last is the truth.
            album_id = HOT_ROWS[(n * 2 + writer) % len(HOT_ROWS)]
            title = f"{self.label} hot w{writer} n{n}"
            self.send_until_accepted(session, "PATCH", f"/albums/{album_id}", {"title": title})
            with self._lock:
                self.expected[album_id] = title
            n += 1

    def stop_hot_writers(self):
        """Stops the hot writers once each has written all its rows once more."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        if self._failures:
            raise self._failures[0]

    def verify(self, flush_wait_s: float = 120) -> Outcome:
        """Flushes, then compares Postgres and the cache with what was accepted."""
        status = self.api.flush(flush_wait_s)
        assert status["pending"] == 0
        rows = dict(self.api.sql("SELECT album_id, title FROM album WHERE album_id = ANY(%s)",
                                 (list(self.expected),)))
        lost = [(i, title, rows.get(i)) for i, title in sorted(self.expected.items()) if rows.get(i) != title]
        for album_id in HOT_ROWS[:3]:
            cached = self.api.get(f"/albums/{album_id}").json()["title"]
            if cached != self.expected.get(album_id, cached):
                lost.append((album_id, self.expected[album_id], f"cache: {cached}"))
        return Outcome(len(self.expected), lost)
