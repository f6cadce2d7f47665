"""Two cache-svc and two gateways side by side over one Redis key prefix, vhost and
database, the gateways and workers calling both cache-svc round robin
(CACHE_SVC_ADDR=ipv4:<a>,<b>): the flushers never claim a row twice, a task and the dead
letters look the same from either gateway, and a cache-svc killed mid-request costs no
request and no accepted write."""

import json
import signal
import threading
import time

import pytest
import requests

from chinook.cache.v1 import cache_pb2
from chinook.grpc_client import CacheClient
from testkit.api import Api
from testkit.metrics import counter
from testkit.near_cache import eventually
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e

MULTIPLIER = 10
BULK_ROWS = 3000
SINGLE_ROWS = 150
STATE_ORDER = {"PENDING": 0, "STARTED": 1, "PROGRESS": 2, "SUCCESS": 3}
UPDATE_ROWS = "/chinook.cache.v1.CacheService/UpdateRows"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    def add_replicas(stack):
        stack.add_cache_svc("cache-svc-b")
        stack.balance_cache_svcs()
        stack.add_gateway("gateway-b")

    with own_stack("replicas", tmp_path_factory.mktemp("replicas"), {
        # Batches small enough that one bulk is many claims, which both flushers compete for.
        "WRITEBACK_BATCH_SIZE": "100",
        # Rows a killed replica claimed but never published come back within the test.
        "WRITEBACK_LEASE_MS": "10000",
        # Refused writes reach the dead letters within a few seconds.
        "WRITEBACK_MAX_ATTEMPTS": "3", "WRITEBACK_RETRY_BACKOFF_MS": "50",
    }, add_replicas) as stack:
        yield stack


@pytest.fixture(scope="module")
def gateways(stack):
    return Api(stack), Api(stack, "gateway-b")


def task_bodies(api_a, api_b, task_id, timeout_s=60):
    """Asks gateway A, then at once gateway B, until both see the task done."""
    deadline = time.monotonic() + timeout_s
    pairs = []
    while time.monotonic() < deadline:
        pair = tuple(api.get(f"/tasks/{task_id}").json() for api in (api_a, api_b))
        pairs.append(pair)
        if all(body["state"] in ("SUCCESS", "FAILURE") for body in pair):
            return pairs
        time.sleep(0.02)
    raise TimeoutError(f"task {task_id} not done: {pairs[-1]}")


@pytest.fixture(scope="module")
def duplication(gateways):
    """The album table multiplied through gateway A, its status followed through both."""
    api_a, api_b = gateways
    started = api_a.post("/tasks/duplicate", json={"multiplier": MULTIPLIER})
    assert started.status_code == 202, started.text
    return task_bodies(api_a, api_b, started.json()["task_id"])


def test_a_task_has_the_same_status_through_either_gateway(gateways, duplication):
    api_a, _ = gateways
    final_a, final_b = duplication[-1]
    assert final_a == final_b and final_b["state"] == "SUCCESS", final_b
    for body_a, body_b in duplication:
        # B is asked after A, from the one result backend: never behind it.
        assert STATE_ORDER[body_b["state"]] >= STATE_ORDER[body_a["state"]], (body_a, body_b)
        assert body_b["progress"]["done"] >= body_a["progress"]["done"], (body_a, body_b)
    [(albums,)] = api_a.sql("SELECT count(*) FROM album")
    assert final_b["result"]["inserted"] == albums // MULTIPLIER * (MULTIPLIER - 1)
    assert albums > BULK_ROWS + SINGLE_ROWS


def published(stack, name):
    """(tasks, rows) the flusher of one cache-svc has published."""
    url = stack.cache_metrics_url(name)
    return counter(url, "chinook_tasks_published_total"), counter(url, "chinook_rows_published_total")


def test_bulk_and_single_updates_through_two_gateways_are_each_written_once(stack, gateways, duplication):
    api_a, api_b = gateways
    ids = [row_id for (row_id,) in api_a.sql("SELECT album_id FROM album ORDER BY album_id")]
    bulk_ids, single_ids = ids[:BULK_ROWS], ids[BULK_ROWS:BULK_ROWS + SINGLE_ROWS]
    store = stack.row_store()
    flushed_before = store.counters().get("flushed", 0)
    published_before = {name: published(stack, name) for name in stack.cache_ports}

    refused = []

    def single_updates():
        for row_id in single_ids:
            response = api_b.patch(f"/albums/{row_id}", json={"title": f"single {row_id}"})
            if response.status_code != 202:
                refused.append((row_id, response.status_code, response.text))

    singles = threading.Thread(target=single_updates)
    singles.start()
    bulk = api_a.post("/albums/bulk", json={"updates": [{"album_id": i, "title": f"bulk {i}"} for i in bulk_ids]})
    singles.join()
    assert bulk.status_code == 202 and bulk.json()["accepted"] == BULK_ROWS, bulk.text
    assert refused == []
    api_b.flush()

    titles = dict(api_a.sql("SELECT album_id, title FROM album WHERE album_id = ANY(%s)", (bulk_ids + single_ids,)))
    assert titles == {**{i: f"bulk {i}" for i in bulk_ids}, **{i: f"single {i}" for i in single_ids}}
    written = len(bulk_ids) + len(single_ids)
    # Every row was updated once, so it is written once: a row two flushers claimed
    # would be published twice and written once (Postgres takes only newer versions).
    assert store.counters()["flushed"] - flushed_before == written
    published_after = {name: published(stack, name) for name in stack.cache_ports}
    rows_published = sum(published_after[name][1] - published_before[name][1] for name in stack.cache_ports)
    assert rows_published == written
    for name in stack.cache_ports:
        assert published_after[name][0] > published_before[name][0], f"{name} published no task"


@pytest.fixture
def poison_constraint(gateways):
    """Postgres refuses titles starting with POISON, as if a constraint came after the writes."""
    api_a, _ = gateways
    with api_a.poison_titles_refused():
        yield


def dead_letter_keys(api):
    return {entry["key"] for entry in api.get("/write-back/dead-letters").json()["dead_letters"]}


def test_dead_letters_are_the_same_through_either_gateway(gateways, poison_constraint):
    api_a, api_b = gateways
    assert api_a.patch("/albums/70", json={"title": "POISON through A"}).status_code == 202
    eventually(lambda: "album:70" in dead_letter_keys(api_b), "album:70 never listed through gateway B", 30)
    listed_a, listed_b = (api.get("/write-back/dead-letters").json() for api in (api_a, api_b))
    assert listed_a == listed_b and listed_b["total"] == 1
    assert listed_b["dead_letters"][0]["value"]["title"] == "POISON through A"

    # Retried through B once Postgres takes it; durable, and gone from A's list too.
    api_a.accept_poison_titles()
    assert api_b.post("/write-back/dead-letters/album:70/retry").status_code == 202
    api_a.flush()
    assert api_a.sql("SELECT title FROM album WHERE album_id = 70") == [("POISON through A",)]
    assert dead_letter_keys(api_a) == dead_letter_keys(api_b) == set()

    # Dead-lettered through B, discarded through A: B can no longer retry it.
    api_a.refuse_poison_titles()
    assert api_b.patch("/albums/71", json={"title": "POISON through B"}).status_code == 202
    eventually(lambda: "album:71" in dead_letter_keys(api_a), "album:71 never listed through gateway A", 30)
    assert api_a.delete("/write-back/dead-letters/album:71").json()["discarded"] is True
    assert api_b.post("/write-back/dead-letters/album:71/retry").status_code == 404
    assert dead_letter_keys(api_a) == dead_letter_keys(api_b) == set()
    assert not api_b.get("/albums/71").json()["title"].startswith("POISON")


class Client:
    """Updates its own rows through one gateway and reads them through the other, one
    request at a time, retrying a 503 after its Retry-After as a real client would."""

    def __init__(self, write_url, read_url, row_ids, label):
        self.write_url, self.read_url, self.row_ids, self.label = write_url, read_url, row_ids, label
        self.session = requests.Session()
        self.accepted: dict[int, str] = {}
        self.requests = 0
        # When the request now in flight was sent.
        self.sent_at: float | None = None
        self.unavailable: list[dict] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=label)

    def send(self, method, url, **kwargs):
        while not self.stop.is_set() or method == "PATCH":
            self.sent_at = time.monotonic()
            try:
                response = self.session.request(method, url, timeout=30, **kwargs)
            except requests.RequestException as exc:
                self.failures.append(f"{method} {url}: {exc}")
                return None
            finally:
                self.sent_at = None
            if response.status_code != 503:
                return response
            self.unavailable.append(dict(response.headers))
            time.sleep(float(response.headers.get("Retry-After", 1)))
        return None

    def waiting_s(self) -> float:
        sent_at = self.sent_at
        return 0.0 if sent_at is None else time.monotonic() - sent_at

    def run(self):
        attempt = 0
        while not self.stop.is_set() and not self.failures:
            row_id = self.row_ids[attempt % len(self.row_ids)]
            title = f"{self.label} {attempt}"
            response = self.send("PATCH", f"{self.write_url}/albums/{row_id}", json={"title": title})
            if response is not None and response.status_code != 202:
                self.failures.append(f"PATCH {row_id}: {response.status_code} {response.text}")
            elif response is not None:
                self.accepted[row_id] = title
            read = self.send("GET", f"{self.read_url}/albums/{row_id}")
            if read is not None and read.status_code != 200:
                self.failures.append(f"GET {row_id}: {read.status_code} {read.text}")
            self.requests += 2
            attempt += 1


def wait_for_requests(clients, count, timeout_s=60):
    targets = [client.requests + count for client in clients]
    eventually(lambda: all(c.requests >= t or c.failures for c, t in zip(clients, targets, strict=False)),
               f"the clients did not send {count} more requests each", timeout_s)


def test_a_cache_svc_killed_mid_request_costs_no_request_and_no_write(stack, gateways):
    api_a, _ = gateways
    clients = [Client(stack.gateway_url_of("gateway"), stack.gateway_url_of("gateway-b"), list(range(200, 220)), "A"),
               Client(stack.gateway_url_of("gateway-b"), stack.gateway_url_of("gateway"), list(range(220, 240)), "B")]
    killed_url = stack.cache_metrics_url("cache-svc-b")
    for client in clients:
        client.thread.start()
    try:
        wait_for_requests(clients, 100)
        # The replica about to die was taking its share of the updates.
        assert counter(killed_url, "chinook_grpc_server_handling_seconds_count", method=UPDATE_ROWS) > 0
        # Frozen first, so that it dies with requests in flight: calls sent to it wait, and
        # each client soon waits for one (the others take a few milliseconds).
        stack.signal("cache-svc-b", signal.SIGSTOP)
        eventually(lambda: all(client.waiting_s() > 1 for client in clients),
                   "no request waited for the frozen cache-svc", 30)
        stack.signal("cache-svc-b", signal.SIGKILL)
        stack.processes["cache-svc-b"].wait(10)
        wait_for_requests(clients, 200)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.thread.join(60)
    for client in clients:
        assert not client.thread.is_alive(), f"client {client.label} still retrying a request"
        assert client.failures == [], client.failures
        # A 503 the client had to retry still said when to.
        assert all("Retry-After" in headers for headers in client.unavailable), client.unavailable

    api_a.flush(wait_s=30)
    accepted = {row_id: title for client in clients for row_id, title in client.accepted.items()}
    assert dict(api_a.sql("SELECT album_id, title FROM album WHERE album_id = ANY(%s)", (list(accepted),))) \
        == accepted

    stack.start("cache-svc-b")
    client = CacheClient(stack.cache_addr_of("cache-svc-b"), 5, stack.grpc_credentials)
    try:
        assert client.is_serving()
        [result] = client.get_rows([cache_pb2.RowKey(entity="album", id=200)])
        assert json.loads(result.row_json)["title"] == accepted[200]
    finally:
        client.close()
    # The gateways' channels connect to it again (after gRPC's reconnect backoff) and call it.
    def restarted_replica_took_an_update():
        for api in gateways:
            assert api.patch("/albums/240", json={"title": "after the restart"}).status_code == 202
        return counter(killed_url, "chinook_grpc_server_handling_seconds_count", method=UPDATE_ROWS) > 0

    eventually(restarted_replica_took_an_update, "no gateway called the restarted cache-svc", 30)
