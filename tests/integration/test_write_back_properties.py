"""Property: over any interleaving of accepts (of cached rows, and of rows not cached,
accepted as partial rows, of either column), flush claims (with leases that end at
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
from persistence_svc.repository import Batch, StoredRow
from testkit.stack import delete_prefixed
from tests.integration.claims import claimed_rows

ALBUM = get_entity("album")
ROWS = (1, 2)

operations = st.lists(st.one_of(
    st.tuples(st.just("accept"), st.sampled_from(ROWS)),
    st.tuples(st.just("accept_cold"), st.sampled_from(ROWS)),
    st.tuples(st.just("accept_artist_cold"), st.tuples(st.sampled_from(ROWS), st.sampled_from((1, 2, 3)))),
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
        cur.execute("SELECT album_id, title, wb_version, artist_id FROM album WHERE album_id = ANY(%s)",
                    (list(ROWS),))
        return {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}


class Run:
    def __init__(self, store, db):
        self.store, self.db = store, db
        self.expected = {}  # row -> last title accepted since the last cache loss
        self.expected_artist = {}  # row -> last artist_id accepted since the last cache loss
        self.tasks = []  # (claim id, batch) claimed, delivered any number of times in any order
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

    def _accept_cold(self, row, fields):
        """As a bulk does: a row not cached is accepted over the version Postgres holds."""
        bases = repository.get_versions(self.db, ALBUM, [row]) if self.store.get("album", row) is None else {}
        assert self.store.accept("album", [(row, fields)], bases)[0] > 0

    def accept_cold(self, row):
        self.writes += 1
        title = f"write {self.writes}"
        self._accept_cold(row, {"title": title})
        self.expected[row] = title

    def accept_artist_cold(self, argument):
        row, artist_id = argument
        self._accept_cold(row, {"artist_id": artist_id})
        self.expected_artist[row] = artist_id

    def claim(self, lease_ms):
        shards = self.store.claim(delay_ms=0, batch_size=2, lease_ms=lease_ms)
        claimed = claimed_rows(shards)
        if claimed:
            self.tasks.append((shards[0].claim, [(r.id, r.version, r.fields) for r in claimed]))

    def accept_and_claim(self, row):
        self.accept(row)
        self.claim(60_000)

    def deliver(self, index):
        if not self.tasks:
            return
        claim, task = self.tasks[index % len(self.tasks)]
        result = repository.apply_writes(self.db, ALBUM, Batch.of(ALBUM, [StoredRow(i, f, v) for i, v, f in task]))
        durable = set(result.applied_ids) | set(result.stale_ids)
        acknowledged = self.store.ack("album", [i for i, _, _ in task if i in durable],
                                        [v for i, v, _ in task if i in durable], claim)
        if acknowledged.outdated:
            # As cache-svc does: Postgres says which clean rows are stale.
            self.store.drop_outdated("album", repository.get_versions(self.db, ALBUM, acknowledged.outdated))

    def deliver_newest_first(self, _):
        """Every claimed batch again, newest first: the worst order for a redelivery."""
        for index in reversed(range(len(self.tasks))):
            self.deliver(index)

    def read(self, row):
        self.ensure_cached(row)
        cached = self.store.get("album", row)
        if cached.partial:
            [loaded] = repository.get_rows(self.db, ALBUM, [row])
            [cached] = self.store.merge("album", [(row, loaded.fields)])
        if row in self.expected:
            assert cached.fields["title"] == self.expected[row]
        if row in self.expected_artist:
            assert cached.fields["artist_id"] == str(self.expected_artist[row])

    def lose_cache(self, _):
        delete_prefixed(self.store.redis, self.store.prefix)
        self.expected.clear()
        self.expected_artist.clear()

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
        cur.execute("UPDATE album SET title = 'original', artist_id = 1, wb_version = 0 WHERE album_id = ANY(%s)",
                    (list(ROWS),))
    store = RowStore(redis_client, f"chinook_prop_{uuid.uuid4().hex[:10]}:", 3600, ENTITIES)
    run = Run(store, db)
    try:
        versions = {row: 0 for row in ROWS}
        for name, argument in ops:
            getattr(run, name)(argument)
            for row, (_, version, _) in pg_rows(db).items():
                assert version >= versions[row], "Postgres went back to an older version"
                versions[row] = version
        run.drain()
        stored = pg_rows(db)
        for row, title in run.expected.items():
            assert stored[row][0] == title, f"row {row}: Postgres has {stored[row][0]!r}, last accepted {title!r}"
            cached = store.get("album", row)
            assert cached is not None and not cached.dirty and cached.fields["title"] == title
        for row, artist_id in run.expected_artist.items():
            assert stored[row][2] == artist_id, f"row {row}: artist {stored[row][2]}, last accepted {artist_id}"
    finally:
        run.lose_cache(None)
