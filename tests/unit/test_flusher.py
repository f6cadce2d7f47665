"""The flusher's loop logic, with in-memory stand-ins for Redis and Celery."""

from types import SimpleNamespace
from typing import NamedTuple

import pytest
from prometheus_client import REGISTRY

from cache_svc.flusher import Flusher
from cache_svc.store import ClaimedBatch, ShardClaim
from chinook import tracing
from chinook.entities import get_entity
from chinook.tracing import LINK_WIDTH, MAX_FLUSH_LINKS

SETTINGS = SimpleNamespace(writeback_batch_size=2, writeback_delay_ms=100, writeback_lease_ms=30_000)
ALBUM = get_entity("album")


class Row(NamedTuple):
    """A pending album row as the stand-in store holds it."""

    id: int
    title: str
    version: int
    links: str = ""


def claimed_batch(rows) -> ClaimedBatch:
    """The rows as lua/claim.lua hands them over: the columnar JSON of their task."""
    rows_json = ALBUM.columns_json([(r.id, r.version, {"title": r.title, "artist_id": 1}) for r in rows])
    links = tuple(r.links for r in rows)
    return ClaimedBatch(rows_json, len(rows), len(rows), links if any(links) else ())


class FakeStore:
    """Shards of ready album rows; a shard is claimable when it holds a whole batch, when
    its oldest row waited the delay (`due`), or when asked with no delay."""

    def __init__(self, shards, due=()):
        self.shards = [list(rows) for rows in shards]
        self.due = set(due)
        self.released = []
        self.rounds = []
        # The claim id of each call, in order: a fresh one unless the caller names one.
        self.claim_ids = []

    def claim(self, delay_ms, batch_size, lease_ms, shards=None, claim=None):
        shards = range(len(self.shards)) if shards is None else shards
        self.rounds.append((delay_ms, list(shards)))
        claim = claim or f"claim-{len(self.claim_ids)}"
        self.claim_ids.append(claim)
        claims = []
        for shard in shards:
            rows = self.shards[shard]
            ready = len(rows)
            if rows and (len(rows) >= batch_size or shard in self.due or delay_ms == 0):
                batch, self.shards[shard] = rows[:batch_size], rows[batch_size:]
                claims.append(ShardClaim(ready, ready, {"album": claimed_batch(batch)}, claim))
            else:
                claims.append(ShardClaim(ready, ready, {}, claim))
        return claims

    def release(self, entity, ids):
        self.released += ids


class FakePublisher:
    def __init__(self, fail_after=None, holding_back=False):
        self.tasks, self.fail_after, self.holding_back = [], fail_after, holding_back
        self.links = []
        self.claims = []

    def holds_back_writes(self):
        return self.holding_back

    def apply_writes(self, entity, rows, claim, links=(), links_dropped=0):
        if self.fail_after is not None and len(self.tasks) >= self.fail_after:
            raise ConnectionError("broker down")
        self.tasks.append((entity, [list(row) for row in ALBUM.rows_from_columns_json(rows)]))
        self.claims.append(claim)
        self.links.append((list(links), links_dropped))


def rows(first, last):
    return [Row(i, f"t{i}", 100 + i) for i in range(first, last + 1)]


def published_ids(publisher):
    return [[row[0] for row in task_rows] for _, task_rows in publisher.tasks]


def test_claims_batches_until_a_partial_one_and_types_the_payload():
    publisher = FakePublisher()
    assert Flusher(FakeStore([rows(1, 5)], due={0}), publisher, SETTINGS).flush_once() == 5
    assert [len(task_rows) for _, task_rows in publisher.tasks] == [2, 2, 1]
    assert publisher.tasks[0] == ("album", [[1, 101, {"title": "t1", "artist_id": 1}],
                                            [2, 102, {"title": "t2", "artist_id": 1}]])


def test_a_hot_shard_does_not_starve_the_others():
    store = FakeStore([rows(1, 6), rows(7, 7)], due={0, 1})
    publisher = FakePublisher()
    Flusher(store, publisher, SETTINGS).flush_once()
    # The first round takes a batch of the hot shard and the row of the other one.
    assert published_ids(publisher)[:2] == [[1, 2], [7]]
    assert sorted(i for ids in published_ids(publisher) for i in ids) == list(range(1, 8))


def test_ready_rows_of_other_shards_go_along_with_a_flush():
    # Shard 1's row has not waited the delay yet, but shard 0 flushes: it joins the task.
    store = FakeStore([rows(1, 1), rows(2, 2), []], due={0})
    publisher = FakePublisher()
    assert Flusher(store, publisher, SETTINGS).flush_once() == 2
    assert published_ids(publisher) == [[1, 2]]
    assert store.rounds[1] == (0, [1])


def test_each_task_carries_the_claim_id_its_rows_were_claimed_under():
    # Round one: a full batch of shard 0, and shard 1's row, claimed in a second call of the
    # same round; round two: the rest of shard 0.
    store = FakeStore([rows(1, 3), rows(4, 4)], due={0})
    publisher = FakePublisher()
    Flusher(store, publisher, SETTINGS).flush_once()
    assert published_ids(publisher) == [[1, 2], [4], [3]]
    first, second = store.claim_ids[0], store.claim_ids[2]
    assert store.claim_ids == [first, first, second] and first != second, "one claim id a round, a fresh one each"
    assert publisher.claims == [first, first, second]


def test_nothing_due_publishes_nothing():
    store = FakeStore([rows(1, 1), []])
    publisher = FakePublisher()
    assert Flusher(store, publisher, SETTINGS).flush_once() == 0
    assert publisher.tasks == [] and store.shards[0] == rows(1, 1)


def published_rows_counted():
    return REGISTRY.get_sample_value("chinook_rows_published_total", {"entity": "album"}) or 0


def test_rows_whose_task_cannot_be_published_are_released():
    store = FakeStore([rows(1, 2), rows(3, 4)])
    counted = published_rows_counted()
    with pytest.raises(ConnectionError):
        Flusher(store, FakePublisher(fail_after=1), SETTINGS).flush_once()
    # The first task went out; the rows of the one that failed are claimable again.
    assert store.released == [3, 4]
    # Only the rows that went out count as published: a count to hold against the rows written.
    assert published_rows_counted() - counted == 2


def test_nothing_is_claimed_while_the_write_back_queue_is_to_migrate():
    store, publisher = FakeStore([rows(1, 3)], due={0}), FakePublisher(holding_back=True)
    assert Flusher(store, publisher, SETTINGS).flush_once() == 0
    # Unclaimed rows carry no lease: they are due as soon as the queue can take them.
    assert store.shards == [rows(1, 3)] and store.rounds == [] and publisher.tasks == [] and store.released == []


def linked_rows(count):
    """Rows each kept two span contexts: one of its own, and one every row shares (a bulk's)."""
    shared = "b" * LINK_WIDTH
    return [Row(i, "t", 100 + i, links=f"{i:0{LINK_WIDTH}x}{shared}")
            for i in range(1, count + 1)]


def test_a_task_carries_its_rows_distinct_links_up_to_the_bound_while_tracing_is_on(monkeypatch):
    monkeypatch.setattr(tracing, "enabled", lambda: True)
    publisher = FakePublisher()
    settings = SimpleNamespace(writeback_batch_size=40, writeback_delay_ms=100, writeback_lease_ms=30_000)
    Flusher(FakeStore([linked_rows(40)], due={0}), publisher, settings).flush_once()
    [(links, dropped)] = publisher.links
    own = [f"{i:0{LINK_WIDTH}x}" for i in range(1, 41)]
    # In the rows' order, each once: the shared one after the first row's own.
    assert links == [own[0], "b" * LINK_WIDTH, *own[1:MAX_FLUSH_LINKS - 1]]
    assert dropped == 41 - MAX_FLUSH_LINKS


def test_a_task_carries_no_links_while_tracing_is_off():
    publisher = FakePublisher()
    Flusher(FakeStore([linked_rows(3)], due={0}), publisher, SETTINGS).flush_once()
    assert publisher.links == [([], 0), ([], 0)]


def test_partial_batches_of_several_shards_join_with_each_rows_unset_columns():
    # Shard 0 holds a whole row and a partial one, shard 1 a whole row: one task of three,
    # each row still leaving exactly the columns it left.
    partial = ALBUM.columns_json([(1, 101, {"title": "whole", "artist_id": 1}), (2, 102, {"title": "partial"})])
    whole = ALBUM.columns_json([(3, 103, {"title": "whole too", "artist_id": 2})])
    flusher = Flusher(FakeStore([]), FakePublisher(), SimpleNamespace(writeback_batch_size=3, writeback_delay_ms=100,
                                                              writeback_lease_ms=30_000))
    [(rows_json, count, links)] = flusher._tasks([ClaimedBatch(partial, 2, 2), ClaimedBatch(whole, 1, 1)])
    assert (count, links) == (3, ())
    assert ALBUM.rows_from_columns_json(rows_json) == [
        (1, 101, {"title": "whole", "artist_id": 1}), (2, 102, {"title": "partial"}),
        (3, 103, {"title": "whole too", "artist_id": 2})]
