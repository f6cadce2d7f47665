"""Property: over any interleaving of accepts, flush claims (with leases that end at
once or never), deliveries, redeliveries in any order, reads and losses of the whole
cache, the versioning and clean-marking logic keeps its promises:
- Postgres' version of a row never goes back;
- a read returns the last accepted write, unless the cache lost its data since;
- once everything is flushed, Postgres holds the last accepted write of each row
  (the last one since a cache loss), and the cache holds nothing dirty.
Runs the real Lua scripts on Redis and the real SQL on Postgres."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_svc.store import RowStore
from chinook.config import load_settings
from chinook.entities import ENTITIES, get_entity
from persistence_svc import initdb, repository
from persistence_svc.db import Database
from persistence_svc.repository import StoredRow

ALBUM = get_entity("album")
ROWS = (1, 2)

operations = st.lists(st.one_of(
    st.tuples(st.just("accept"), st.sampled_from(ROWS)),
    st.tuples(st.just("claim"), st.sampled_from((0, 60_000))),
    st.tuples(st.just("accept_and_claim"), st.sampled_from(ROWS)),
    st.tuples(st.just("deliver"), st.integers(0, 50)),
    st.tuples(st.just("deliver_newest_first"), st.just(None)),
    st.tuples(st.just("read"), st.sampled_from(ROWS)),
    st.tuples(st.just("lose_cache"), st.just(None)),
), max_size=30)


@pytest.fixture(scope="module")
def db():
    url = initdb.admin_url(load_settings().database_url).rsplit("/", 1)[0] + f"/chinook_prop_{uuid.uuid4().hex[:10]}"
    initdb.init_database(url)
    database = Database(url, max_connections=2)
    yield database
    database.close()
    initdb.drop_database(url)


def pg_rows(db):
    with db.transaction() as cur:
        cur.execute("SELECT album_id, title, wb_version FROM album WHERE album_id = ANY(%s)", (list(ROWS),))
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


class Run:
    def __init__(self, store, db):
        self.store, self.db = store, db
        self.expected = {}  # row -> last title accepted since the last cache loss
        self.tasks = []  # claimed batches, delivered any number of times in any order
        self.writes = 0

    def ensure_cached(self, row):
        if self.store.get("album", row) is None:
            token = self.store.begin_fill("album", [row])
            loaded = repository.get_rows(self.db, ALBUM, [row])
            self.store.fill("album", token, [(r.id, r.fields, r.version) for r in loaded])

    def accept(self, row):
        self.writes += 1
        title = f"write {self.writes}"
        self.ensure_cached(row)
        assert self.store.accept("album", [(row, {"title": title})])[0] > 0
        self.expected[row] = title

    def claim(self, lease_ms):
        claimed = self.store.claim("album", delay_ms=0, batch_size=2, lease_ms=lease_ms)
        if claimed:
            self.tasks.append([(r.id, r.version, ALBUM.row_from_store(r.fields)) for r in claimed])

    def accept_and_claim(self, row):
        self.accept(row)
        self.claim(60_000)

    def deliver(self, index):
        if not self.tasks:
            return
        task = self.tasks[index % len(self.tasks)]
        result = repository.apply_writes(self.db, ALBUM, [StoredRow(i, f, v) for i, v, f in task])
        durable = set(result.applied_ids) | set(result.stale_ids)
        self.store.ack("album", [(i, v) for i, v, _ in task if i in durable], len(result.applied_ids))

    def deliver_newest_first(self, _):
        """Every claimed batch again, newest first: the worst order for a redelivery."""
        for index in reversed(range(len(self.tasks))):
            self.deliver(index)

    def read(self, row):
        self.ensure_cached(row)
        if row in self.expected:
            assert self.store.get("album", row).fields["title"] == self.expected[row]

    def lose_cache(self, _):
        for key in self.store.redis.scan_iter(match=f"{self.store.prefix}*"):
            self.store.redis.delete(key)
        self.expected.clear()

    def drain(self):
        for _ in range(20):
            self.claim(0)
            for index in range(len(self.tasks)):
                self.deliver(index)
            self.tasks.clear()
            if self.store.pending_total() == 0:
                return
        raise AssertionError("rows stay pending after every batch was delivered")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_versioning_and_clean_marking_under_any_interleaving(db, redis_client, ops):
    with db.transaction() as cur:
        cur.execute("UPDATE album SET title = 'original', wb_version = 0 WHERE album_id = ANY(%s)", (list(ROWS),))
    store = RowStore(redis_client, f"chinook_prop_{uuid.uuid4().hex[:10]}:", 3600, ENTITIES)
    run = Run(store, db)
    try:
        versions = {row: 0 for row in ROWS}
        for name, argument in ops:
            getattr(run, name)(argument)
            for row, (_, version) in pg_rows(db).items():
                assert version >= versions[row], "Postgres went back to an older version"
                versions[row] = version
        run.drain()
        stored = pg_rows(db)
        for row, title in run.expected.items():
            assert stored[row][0] == title, f"row {row}: Postgres has {stored[row][0]!r}, last accepted {title!r}"
            cached = store.get("album", row)
            assert cached is not None and not cached.dirty and cached.fields["title"] == title
    finally:
        run.lose_cache(None)
